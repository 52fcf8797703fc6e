// The annotation page: choices by mouse or keyboard, ranking by drag or keyboard, submit, undo.
// All text shown comes from the server-rendered page or is set with textContent (inert).
(function () {
  "use strict";
  const data = JSON.parse(document.getElementById("task-data").textContent);
  const projectId = data.project_id;
  const task = data.task;
  const status = document.getElementById("status");
  const state = { choices: {}, aspect: 0, picked: null, busy: false };

  function say(text, ok) {
    status.textContent = text;
    status.className = ok ? "ok" : "error";
  }

  async function post(path, body) {
    const res = await fetch(path, {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body || {}), credentials: "same-origin",
    });
    let payload = {};
    try { payload = await res.json(); } catch (e) { /* not JSON */ }
    return { ok: res.ok, status: res.status, payload: payload };
  }

  // ---------------------------------------------------------------- pairwise
  const rows = Array.from(document.querySelectorAll("tr.aspect"));
  function markCurrent() {
    rows.forEach((r, i) => r.classList.toggle("current", i === state.aspect));
  }
  function choose(row, choice) {
    state.choices[row.dataset.aspect] = choice;
    row.querySelectorAll("button.choice").forEach(b =>
      b.classList.toggle("selected", b.dataset.choice === choice));
  }
  rows.forEach((row, i) => {
    row.querySelectorAll("button.choice").forEach(b => b.addEventListener("click", () => {
      choose(row, b.dataset.choice);
      state.aspect = Math.min(i + 1, rows.length - 1);
      markCurrent();
    }));
  });
  markCurrent();

  // ---------------------------------------------------------------- ranking
  const list = document.getElementById("ranking");
  function items() { return Array.from(list.querySelectorAll("li.rank-item")); }
  function pick(li) {
    state.picked = li;
    items().forEach(x => x.classList.toggle("picked", x === li));
  }
  // each response's position (1 = best), the number key that picks it
  function renumber() {
    items().forEach((li, i) => { const pos = li.querySelector(".pos"); pos.textContent = String(i + 1); pos.title = `press ${i + 1} to pick`; });
  }
  function move(li, delta) {
    if (!li) return;
    if (delta < 0 && li.previousElementSibling) list.insertBefore(li, li.previousElementSibling);
    if (delta > 0 && li.nextElementSibling) list.insertBefore(li.nextElementSibling, li);
    renumber();
  }
  if (list) {
    items().forEach(li => li.addEventListener("click", () => pick(li)));
    // pointer-based drag (works with mouse, touch and WebDriver pointer actions)
    let dragged = null;
    list.addEventListener("pointerdown", ev => {
      const handle = ev.target.closest(".handle");
      if (!handle) return;
      dragged = handle.closest("li");
      dragged.classList.add("dragging");
      pick(dragged);
      ev.preventDefault();
    });
    document.addEventListener("pointermove", ev => {
      if (!dragged) return;
      // the dragged response goes before the first other one whose middle is below the pointer
      const after = items().filter(x => x !== dragged).find(o => {
        const box = o.getBoundingClientRect();
        return ev.clientY < box.top + box.height / 2;
      });
      if (after) { if (dragged.nextElementSibling !== after) list.insertBefore(dragged, after); }
      else if (list.lastElementChild !== dragged) list.appendChild(dragged);
      renumber();
    });
    document.addEventListener("pointerup", () => {
      if (dragged) dragged.classList.remove("dragging");
      dragged = null;
    });
  }

  // ---------------------------------------------------------------- submit / undo
  function value() {
    if (!task) return null;
    if (task.kind === "pairwise") {
      const missing = task.aspects.filter(a => !(a in state.choices));
      if (missing.length) { say("Choose A, B or tie for: " + missing.join(", "), false); return null; }
      return { choices: state.choices };
    }
    // data-index is the response's canonical index: the label is stored in the task's own
    // order, whatever order this annotator was shown
    return { ranking: items().map(li => parseInt(li.dataset.index, 10)) };
  }
  async function submit() {
    if (state.busy) return;
    const v = value();
    if (!v) return;
    state.busy = true;
    const reason = document.getElementById("reason").value;
    const r = await post(`/api/projects/${projectId}/labels`,
                         { task_id: task.id, value: v, reason: reason || null });
    state.busy = false;
    if (r.ok) { say("Saved.", true); window.location.reload(); }
    else say(r.payload.error || `Error ${r.status}`, false);
  }
  async function undo() {
    if (state.busy) return;
    state.busy = true;
    const r = await post(`/api/projects/${projectId}/undo`);
    state.busy = false;
    if (r.ok && r.payload.undone !== null) { say("Undone.", true); window.location.reload(); }
    else if (r.ok) say("Nothing to undo.", false);
    else say(r.payload.error || `Error ${r.status}`, false);
  }
  const submitButton = document.getElementById("submit");
  if (submitButton) submitButton.addEventListener("click", submit);
  const undoButton = document.getElementById("undo");
  if (undoButton) undoButton.addEventListener("click", undo);

  // ---------------------------------------------------------------- keyboard
  document.addEventListener("keydown", ev => {
    const tag = (ev.target.tagName || "").toLowerCase();
    if (tag === "textarea" || tag === "input" || tag === "select") return;
    if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
    if (ev.key === "u") { ev.preventDefault(); undo(); return; }
    if (!task) return;
    if (ev.key === "Enter") { ev.preventDefault(); submit(); return; }
    if (task.kind === "pairwise") {
      const map = { "1": "A", "2": "B", "0": "tie" };
      if (ev.key in map && rows.length) {
        ev.preventDefault();
        choose(rows[state.aspect], map[ev.key]);
        state.aspect = Math.min(state.aspect + 1, rows.length - 1);
        markCurrent();
      }
      return;
    }
    const n = parseInt(ev.key, 10);
    if (!isNaN(n) && n >= 1 && n <= items().length) { ev.preventDefault(); pick(items()[n - 1]); return; }
    if (ev.key === "ArrowUp") { ev.preventDefault(); move(state.picked, -1); }
    if (ev.key === "ArrowDown") { ev.preventDefault(); move(state.picked, +1); }
  });
})();
