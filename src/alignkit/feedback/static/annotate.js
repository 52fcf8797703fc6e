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
  // the shared widget (ranking.js): drag, renumbering, moves
  const widget = list ? window.alignkitRanking.attach(list, li => pick(li)) : null;
  function items() { return widget ? widget.items() : []; }
  function pick(li) {
    state.picked = li;
    items().forEach(x => x.classList.toggle("picked", x === li));
  }
  function move(li, delta) { widget.move(li, delta); }
  if (list) items().forEach(li => li.addEventListener("click", () => pick(li)));

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
    return { ranking: widget.order() };
  }
  async function submit() {
    if (state.busy) return;
    if (state.revealed) { window.location.reload(); return; }
    const v = value();
    if (!v) return;
    state.busy = true;
    const reason = document.getElementById("reason").value;
    const r = await post(`/api/projects/${projectId}/labels`,
                         { task_id: task.id, value: v, reason: reason || null });
    state.busy = false;
    if (r.ok && r.payload.suggestion) { say("Saved.", true); reveal(r.payload.suggestion); }
    else if (r.ok) { say("Saved.", true); window.location.reload(); }
    else say(r.payload.error || `Error ${r.status}`, false);
  }
  // assist "after": the judge's suggestion, shown once the label is in, then on to the next
  function reveal(s) {
    const p = document.getElementById("suggestion-after");
    const what = task.kind === "pairwise"
      ? (s.choice === "tie" ? "a tie" : s.choice + " is better")
      : s.ranking.join(" > ");
    const conf = s.confidence === null ? "" : ` (confidence ${Math.round(s.confidence * 100)}%)`;
    p.textContent = "AI suggestion: " + what + conf;
    p.hidden = false;
    state.revealed = true;
    const next = document.getElementById("next");
    next.hidden = false;
    next.focus();
  }
  const nextButton = document.getElementById("next");
  if (nextButton) nextButton.addEventListener("click", () => window.location.reload());
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
