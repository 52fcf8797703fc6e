// Admin dashboard: resolve disputes (a ranking by dragging its responses, with the annotation
// page's ranking widget), re-score the queue with the attached reward model.
(function () {
  "use strict";
  const data = JSON.parse(document.getElementById("page-data").textContent);
  async function post(path, body) {
    const res = await fetch(path, { method: "POST", headers: { "Content-Type": "application/json" },
                                    body: JSON.stringify(body || {}), credentials: "same-origin" });
    let payload = {};
    try { payload = await res.json(); } catch (e) { /* not JSON */ }
    return { ok: res.ok, payload: payload };
  }
  document.querySelectorAll(".dispute").forEach(box => {
    const list = box.querySelector("ol.resolve-ranking");
    const widget = list ? window.alignkitRanking.attach(list, null) : null;
    box.querySelector("button.resolve").addEventListener("click", async () => {
      let value;
      if (box.dataset.kind === "pairwise") {
        const choices = {};
        box.querySelectorAll(".resolve-choice").forEach(s => { choices[s.dataset.aspect] = s.value; });
        value = { choices: choices };
      } else {
        value = { ranking: widget.order() };
      }
      const r = await post(`/api/admin/tasks/${box.dataset.taskId}/resolve`, { value: value });
      if (r.ok) window.location.reload();
      else { const p = document.createElement("p"); p.className = "error"; p.textContent = r.payload.error; box.appendChild(p); }
    });
  });
  const refresh = document.getElementById("refresh-active");
  if (refresh) refresh.addEventListener("click", async () => {
    const r = await post(`/api/admin/projects/${data.project_id}/active`);
    if (r.ok) window.location.reload();
  });
})();
