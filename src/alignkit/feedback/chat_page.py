"""The chat page's script and style (``chat_app``), kept as strings so that they ship with the
module: the security policy allows scripts and styles only as files from this server, never
inline. Every text from the model or a user is put in the page as ``textContent``, never as
HTML."""

CHAT_CSS = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 0 auto; max-width: 980px; padding: 0 1em;
       color: #1d2330; }
header { display: flex; gap: .8em; align-items: center; flex-wrap: wrap; padding: .8em 0;
         border-bottom: 1px solid #d8dce5; }
header .who { margin-left: auto; }
form.inline { display: inline; }
.notice { background: #fff6d6; border: 1px solid #e6c84f; padding: .5em .8em; border-radius: 4px; }
.narrow { max-width: 420px; }
.narrow label { display: block; margin: .6em 0; }
.error { color: #a10000; }
.turn { margin: 1em 0; }
.user-message { background: #e9f0ff; padding: .5em .8em; border-radius: 6px;
                white-space: pre-wrap; }
.answers { display: flex; gap: 1em; margin-top: .5em; }
.answer { flex: 1; border: 1px solid #d8dce5; border-radius: 6px; padding: .6em .8em; }
.answer.picked { border: 2px solid #1c7c3c; background: #f1fbf4; }
.answer .content { white-space: pre-wrap; min-height: 1.5em; }
.answer .provenance { color: #667; font-size: 12px; margin: .3em 0; }
.answer .actions { display: flex; gap: .4em; flex-wrap: wrap; align-items: center; }
.answer .reason { flex: 1; min-width: 10em; }
.answer .rated { color: #1c5c9c; font-size: 13px; }
#send-form { position: sticky; bottom: 0; background: #fff; padding: .6em 0;
             border-top: 1px solid #d8dce5; }
#send-form textarea { width: 100%; box-sizing: border-box; }
table { border-collapse: collapse; margin-top: 1em; }
td, th { border: 1px solid #d8dce5; padding: .3em .6em; text-align: left; }
"""

CHAT_JS = r"""
"use strict";
(function () {
  const prefix = document.body.dataset.prefix || "/chat";
  const status = document.getElementById("status");
  let conversationId = null;

  function say(text) { if (status) status.textContent = text; }

  async function api(method, path, body) {
    const options = {method, headers: {}, credentials: "same-origin"};
    if (body !== undefined) {
      options.headers["Content-Type"] = "application/json";
      options.body = JSON.stringify(body);
    }
    const response = await fetch(prefix + path, options);
    const data = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error(data.error || ("HTTP " + response.status));
    return data;
  }

  function element(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function button(label, className, onClick) {
    const node = element("button", className, label);
    node.type = "button";
    node.addEventListener("click", onClick);
    return node;
  }

  function renderTurn(message, turn) {
    const box = element("section", "turn");
    box.dataset.turnId = turn.turn_id;
    box.appendChild(element("div", "user-message", message));
    const row = element("div", "answers");
    const sideBySide = turn.answers.length > 1;
    turn.answers.forEach((answer, i) => {
      const card = element("article", "answer");
      card.dataset.answerId = answer.id;
      card.dataset.slot = sideBySide ? "AB"[i] : "";
      if (sideBySide) card.appendChild(element("strong", "slot", "Answer " + "AB"[i]));
      card.appendChild(element("div", "content", answer.content));
      card.appendChild(element("div", "provenance",
        answer.model + " · temperature " + answer.temperature + " · top_p " + answer.top_p +
        " · max_tokens " + answer.max_tokens + " · seed " + answer.seed));
      const actions = element("div", "actions");
      if (sideBySide) {
        actions.appendChild(button("This one is better", "pick", async () => {
          try {
            await api("POST", "/api/turns/" + turn.turn_id + "/pick", {answer_id: answer.id});
            row.querySelectorAll(".answer").forEach(a => a.classList.remove("picked"));
            card.classList.add("picked");
            say("Picked answer " + "AB"[i] + ".");
          } catch (e) { say("Could not save the pick: " + e.message); }
        }));
      }
      const reason = element("input", "reason");
      reason.placeholder = "Reason (optional)";
      reason.maxLength = 2000;
      const rated = element("span", "rated", "");
      const rate = value => async () => {
        try {
          await api("POST", "/api/answers/" + answer.id + "/rating",
                    {value, reason: reason.value || null});
          rated.textContent = value === "up" ? "Rated: thumbs up" : "Rated: thumbs down";
          card.dataset.rating = value;
          say("Rating saved.");
        } catch (e) { say("Could not save the rating: " + e.message); }
      };
      actions.appendChild(button("👍 Good", "thumb-up", rate("up")));
      actions.appendChild(button("👎 Bad", "thumb-down", rate("down")));
      actions.appendChild(reason);
      actions.appendChild(rated);
      card.appendChild(actions);
      row.appendChild(card);
    });
    box.appendChild(row);
    document.getElementById("log").appendChild(box);
    box.scrollIntoView({block: "end"});
  }

  const form = document.getElementById("send-form");
  if (form) {
    form.addEventListener("submit", async event => {
      event.preventDefault();
      const input = document.getElementById("message");
      const message = input.value;
      if (!message.trim()) return;
      const send = document.getElementById("send");
      send.disabled = true;
      say("The model is answering…");
      try {
        const turn = await api("POST", "/api/turns", {
          conversation_id: conversationId, message,
          side_by_side: document.getElementById("side-by-side").checked});
        conversationId = turn.conversation_id;
        input.value = "";
        renderTurn(message, turn);
        say("");
      } catch (e) { say("No answer: " + e.message); }
      send.disabled = false;
    });
    document.getElementById("new-chat").addEventListener("click", () => {
      conversationId = null;
      document.getElementById("log").textContent = "";
      say("New conversation.");
    });
    document.getElementById("delete-mine").addEventListener("click", async () => {
      if (!window.confirm("Delete all your stored conversations? This cannot be undone.")) return;
      try {
        const done = await api("DELETE", "/api/me/conversations");
        conversationId = null;
        document.getElementById("log").textContent = "";
        say("Deleted " + done.deleted + " conversation(s).");
      } catch (e) { say("Could not delete: " + e.message); }
    });
  }

  document.querySelectorAll("button.review").forEach(node => {
    node.addEventListener("click", async () => {
      const project = parseInt(document.getElementById("project").value, 10);
      try {
        const done = await api("POST", "/api/admin/conversations/" +
                               node.dataset.conversationId + "/review", {project_id: project});
        say("Sent " + done.task_ids.length + " task(s) to the review queue.");
        node.disabled = true;
      } catch (e) { say("Could not send: " + e.message); }
    });
  });
})();
"""
