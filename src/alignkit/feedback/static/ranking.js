// The ranking widget shared by the annotation page and the admin's dispute resolution: an <ol> of
// li.rank-item (each with a .pos number and a .handle), reordered by pointer drag (mouse, touch
// and WebDriver pointer actions alike) or by move(); each item's data-index is the response's
// canonical index, so order() is a ranking in the task's own order, best first.
(function () {
  "use strict";
  function attach(list, onPick) {
    function items() { return Array.from(list.querySelectorAll("li.rank-item")); }
    // each response's position (1 = best), the number key that picks it
    function renumber() {
      items().forEach((li, i) => {
        const pos = li.querySelector(".pos");
        pos.textContent = String(i + 1);
        pos.title = `press ${i + 1} to pick`;
      });
    }
    function move(li, delta) {
      if (!li) return;
      if (delta < 0 && li.previousElementSibling) list.insertBefore(li, li.previousElementSibling);
      if (delta > 0 && li.nextElementSibling) list.insertBefore(li.nextElementSibling, li);
      renumber();
    }
    let dragged = null;
    list.addEventListener("pointerdown", ev => {
      const handle = ev.target.closest(".handle");
      if (!handle || !list.contains(handle)) return;
      dragged = handle.closest("li");
      dragged.classList.add("dragging");
      if (onPick) onPick(dragged);
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
    return {
      items: items, renumber: renumber, move: move,
      order: () => items().map(li => parseInt(li.dataset.index, 10)),
    };
  }
  window.alignkitRanking = { attach: attach };
})();
