// The admin page: every kernel, the GPU queue, GPUs per node and recent culls, live from the
// gateway's kernel status stream (server-sent events). Plain DOM, text only (never innerHTML):
// user names and messages come from users and the cluster.
"use strict";
(function () {
  const params = new URLSearchParams(window.location.search);
  const token = params.get("token");
  if (token) {
    // Keep the token out of the address bar, history and bookmarks once the page has it.
    params.delete("token");
    const rest = params.toString();
    window.history.replaceState(null, "", window.location.pathname + (rest ? "?" + rest : ""));
  }
  const streamUrl = "../api/elastic/kernels/stream" +
    (token ? "?token=" + encodeURIComponent(token) : "");
  const kernels = new Map();
  let overview = { gpu_queue: [], nodes: [], culls: [] };
  let pending = false;

  function cell(row, text, cls) {
    const td = document.createElement("td");
    td.textContent = text === null || text === undefined || text === "" ? "—" : String(text);
    if (cls) td.className = cls;
    row.appendChild(td);
    return td;
  }

  function fill(id, rows, columns, emptyText) {
    const body = document.querySelector("#" + id + " tbody");
    const fresh = document.createElement("tbody");
    if (rows.length === 0) {
      const tr = fresh.insertRow();
      const td = cell(tr, emptyText, "empty");
      td.colSpan = document.querySelectorAll("#" + id + " thead th").length;
    }
    for (const row of rows) {
      const tr = fresh.insertRow();
      for (const [value, cls] of columns(row)) cell(tr, value, cls);
    }
    body.replaceWith(fresh);
  }

  function when(iso) {
    if (!iso) return "";
    const d = new Date(iso);
    return d.toLocaleString(undefined, { dateStyle: "short", timeStyle: "medium" });
  }

  function counts(id, key) {
    const found = new Map();
    for (const k of kernels.values()) {
      const name = key(k) || "—";
      const c = found.get(name) || { name: name, kernels: 0, gpus: 0 };
      c.kernels += 1;
      c.gpus += k.gpus || 0;
      found.set(name, c);
    }
    const rows = [...found.values()].sort((a, b) => a.name.localeCompare(b.name));
    fill(id, rows, (c) => [[c.name], [c.kernels, "num"], [c.gpus, "num"]], "none");
  }

  function cullText(k) {
    const c = k.cull || {};
    if (c.protected) return "not while " + c.protected;
    return when(c.idle_deadline) || "never";
  }

  function onCull(c) {
    if (c.on_cull !== "Suspend") return "delete";
    return c.saved ? "suspend (variables saved)" : "delete (no snapshot store)";
  }

  function render() {
    pending = false;
    const list = [...kernels.values()].sort((a, b) =>
      (a.user + a.created_at + a.id).localeCompare(b.user + b.created_at + b.id));
    counts("by-user", (k) => k.user);
    counts("by-kernelspec", (k) => k.kernelspec);
    counts("by-node", (k) => k.node);
    counts("by-phase", (k) => k.phase);
    fill("kernels", list, (k) => [
      [k.user], [k.display_name + " (" + k.kernelspec + ")"], [k.node],
      [k.phase, "phase-" + k.phase], [k.state], [k.resources && k.resources.summary],
      [cullText(k)], [onCull(k.cull || {})], [k.id, "id"],
    ], "No kernels.");
    fill("queue", overview.gpu_queue || [], (w) => [
      [w.position, "num"], [w.user || "(another user)"], [w.gpus, "num"],
      [when(w.waiting_since)], [w.gated ? "yes" : "no"], [w.scheduler],
      [w.reclaimed ? (w.reclaimed_kernel || "yes") : "no", w.reclaimed_kernel ? "id" : ""],
      [w.kernel_id, "id"],
    ], "Nobody is waiting for a GPU.");
    fill("nodes", overview.nodes || [], (n) => [
      [n.node], [n.gpus_held, "num"], [n.gpus_busy, "num"], [n.kernels, "num"],
    ], "No running GPU kernels.");
    fill("culls", overview.culls || [], (c) => [
      [when(c.at)], [c.user], [c.kernelspec], [c.reason], [c.summary + ": " + c.message],
      [c.kernel_id, "id"],
    ], "No culls yet.");
    document.getElementById("kernels").querySelector("caption").textContent =
      "Every kernel, by user (" + kernels.size + ")";
  }

  function soon() {
    if (!pending) {
      pending = true;
      window.requestAnimationFrame(render);
    }
  }

  function status(text, down) {
    const el = document.getElementById("status");
    el.textContent = text;
    el.className = down ? "down" : "";
  }

  function connect() {
    const source = new EventSource(streamUrl);
    source.addEventListener("snapshot", (e) => {
      const data = JSON.parse(e.data);
      kernels.clear();
      for (const k of data.kernels) kernels.set(k.id, k);
      overview = data.overview || overview;
      document.body.dataset.ready = "true";
      status("Live: " + kernels.size + " kernels, as of " + new Date().toLocaleTimeString());
      soon();
    });
    source.addEventListener("kernel", (e) => {
      const k = JSON.parse(e.data);
      kernels.set(k.id, k);
      status("Live: updated " + new Date().toLocaleTimeString());
      soon();
    });
    source.addEventListener("removed", (e) => {
      kernels.delete(JSON.parse(e.data).id);
      soon();
    });
    source.addEventListener("overview", (e) => {
      overview = JSON.parse(e.data);
      soon();
    });
    source.onerror = () => {
      // EventSource reconnects by itself (and gets a fresh snapshot).
      status("Disconnected from the gateway; reconnecting…", true);
    };
  }

  document.addEventListener("DOMContentLoaded", connect);
})();
