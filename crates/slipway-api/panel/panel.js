// Slipway's web panel: one page, no dependencies. It talks to the daemon's own API, signed in
// by an HttpOnly cookie that this script never sees; every request carries
// `X-Slipway-Panel: 1`, which the API requires with the cookie on anything but a read.
"use strict";

// ---------------------------------------------------------------------------------------------
// Small helpers

const $ = (selector, root = document) => root.querySelector(selector);
const $$ = (selector, root = document) => Array.from(root.querySelectorAll(selector));
const enc = encodeURIComponent;

/** Makes an element: h("a", {href: "#/"}, "text", child, ...). Text is never parsed as HTML. */
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") el.className = value;
    else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

/** Replaces an element's children with `content`: a node, a string, or (nested) arrays of them. */
function fill(el, content) {
  const nodes = [content].flat(Infinity).filter((c) => c !== null && c !== undefined && c !== false && c !== "");
  el.replaceChildren(...nodes);
}

const TERMINAL = new Set(["ACTIVE", "SUPERSEDED", "ERROR", "CANCELED"]);
const KINDS = [
  ["service", "Services"],
  ["worker", "Workers"],
  ["job", "Jobs"],
  ["database", "Databases"],
];
const NOT_RESTARTABLE = {
  job: "not restartable: a job runs only as part of a deployment",
  database: "not restartable: a database keeps running and keeps its data",
};

function shortId(id) {
  if (!id) return "";
  return id.startsWith("sha256:") ? id.slice(7, 19) : id.slice(0, 8);
}

function fmtTime(iso) {
  if (!iso) return "—";
  const d = new Date(iso);
  return d.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "medium" });
}

function fmtDuration(ms) {
  if (ms === null || ms === undefined || Number.isNaN(ms)) return "—";
  if (ms < 1000) return `${Math.max(0, Math.round(ms))} ms`;
  const s = ms / 1000;
  if (s < 60) return `${s.toFixed(1)} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${String(Math.floor(s % 60)).padStart(2, "0")} s`;
  return `${Math.floor(m / 60)} h ${String(m % 60).padStart(2, "0")} min`;
}

/** How long a deployment took, or has taken so far. */
function deploymentDuration(d) {
  const start = Date.parse(d.created_at);
  const end = d.ended_at ? Date.parse(d.ended_at) : TERMINAL.has(d.phase) ? Date.parse(d.updated_at) : Date.now();
  return end - start;
}

function phaseBadge(phase, attrs = {}) {
  return h("span", { class: `phase ${phase}`, ...attrs }, phase);
}

// ---------------------------------------------------------------------------------------------
// Talking to the API

class ApiError extends Error {
  constructor(status, id, message) {
    super(message);
    this.status = status;
    this.id = id;
  }
}

/** What an API error means, in words a person understands. */
function explain(status, message) {
  const m = (message || "").trim().replace(/([^.!?])$/, "$1.");
  switch (status) {
    case 0:
      return "The Slipway daemon cannot be reached. Is it running? Reload the page to try again.";
    case 400:
      return m ? `The request was refused: ${m}` : "The request was refused as malformed.";
    case 401:
      return "This token is not valid, or it was revoked.";
    case 403:
      return /read-only/.test(m)
        ? "Your token is read-only: it can look at apps but cannot change them."
        : m || "This is not allowed.";
    case 404:
      return m ? `Not found: ${m}` : "Not found.";
    case 409:
      return m ? `Conflict: ${m}` : "That conflicts with something that exists.";
    case 413:
      return "The request is too large.";
    case 422:
      return m ? `Refused: ${m}` : "The app's state does not allow that now.";
    case 503:
      return "The daemon is shutting down; try again once it is back.";
    default:
      if (status >= 500) return "Something failed inside the daemon; its log says why.";
      return m || `The request failed (HTTP ${status}).`;
  }
}

async function api(path, { method = "GET", body, signal } = {}) {
  const headers = { "X-Slipway-Panel": "1", Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const send = () =>
    fetch(path, {
      method,
      headers,
      signal,
      credentials: "same-origin",
      cache: "no-store",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  let res;
  try {
    res = await send();
  } catch (e) {
    if (e.name === "AbortError") throw e;
    // A read that met a closing connection is tried once more before it counts as a failure.
    if (method !== "GET") throw new ApiError(0, "network", explain(0));
    await new Promise((resolve) => setTimeout(resolve, 300));
    try {
      res = await send();
    } catch (e2) {
      if (e2.name === "AbortError") throw e2;
      throw new ApiError(0, "network", explain(0));
    }
  }
  const text = await res.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch (_) {
    data = null;
  }
  if (!res.ok) {
    const error = new ApiError(res.status, data && data.id, explain(res.status, data && data.message));
    if (res.status === 401 && !path.startsWith("/panel/")) {
      signedOut("Your session has ended: the token is no longer accepted (it may have been revoked). Sign in again.");
    }
    throw error;
  }
  return data;
}

/** Runs `fn` with `controls` disabled (and the first marked busy), then enables them again. */
async function busy(controls, fn) {
  const before = controls.map((c) => c.disabled);
  controls.forEach((c) => (c.disabled = true));
  if (controls[0]) controls[0].setAttribute("aria-busy", "true");
  try {
    return await fn();
  } finally {
    controls.forEach((c, i) => (c.disabled = before[i]));
    if (controls[0]) controls[0].removeAttribute("aria-busy");
  }
}

function showError(el, message) {
  el.textContent = message;
  el.hidden = false;
}

function banner(message, kind = "error") {
  const el = $("#banner");
  el.className = kind === "info" ? "banner info" : "banner";
  el.textContent = message;
  el.hidden = !message;
}

// ---------------------------------------------------------------------------------------------
// Pages and routing

const session = { scope: null, page: null };

function route() {
  const parts = location.hash
    .replace(/^#\/?/, "")
    .split("/")
    .filter(Boolean)
    .map(decodeURIComponent);
  if (parts.length === 0 || (parts.length === 1 && parts[0] === "apps")) return ["apps"];
  if (parts[0] === "apps" && parts.length === 2) return ["app", parts[1]];
  if (parts[0] === "apps" && parts.length === 4 && parts[2] === "deployments") {
    return ["deployment", parts[1], parts[3]];
  }
  return ["missing"];
}

/** Puts a page in place, unless the person has moved on since it started loading. */
function mount(signal, ...nodes) {
  if (signal.aborted) return false;
  fill($("#main"), nodes);
  return true;
}

function setChrome(signedIn) {
  $("#nav").hidden = !signedIn;
  $("#sign-out").hidden = !signedIn;
  const who = $("#who");
  who.hidden = !signedIn;
  who.textContent = signedIn
    ? session.scope === "read-only"
      ? "Signed in (read-only token)"
      : "Signed in"
    : "";
}

async function render() {
  if (session.page) session.page.abort();
  const page = new AbortController();
  session.page = page;
  if (!session.scope) {
    renderSignIn();
    return;
  }
  setChrome(true);
  banner("");
  const [name, ...args] = route();
  try {
    if (name === "apps") await renderApps(page.signal);
    else if (name === "app") await renderApp(page.signal, ...args);
    else if (name === "deployment") await renderDeployment(page.signal, ...args);
    else mount(page.signal, h("div", { class: "card" }, h("h1", {}, "No such page"), h("p", {}, h("a", { href: "#/" }, "Back to the apps"))));
  } catch (e) {
    if (e.name === "AbortError" || page.signal.aborted || e.status === 401) return;
    mount(
      page.signal,
      h(
        "div",
        { class: "card" },
        h("p", { class: "error", role: "alert", id: "page-error" }, e.message || String(e)),
        h("p", {}, h("a", { href: "#/" }, "Back to the apps")),
      ),
    );
  }
}

function signedOut(message) {
  session.scope = null;
  if (session.page) session.page.abort();
  for (const d of $$("dialog[open]")) d.close();
  renderSignIn(message);
}

// ---------------------------------------------------------------------------------------------
// Sign-in

function renderSignIn(message, info) {
  setChrome(false);
  banner(info || "", "info");
  const input = h("input", {
    id: "token",
    name: "token",
    type: "password",
    autocomplete: "off",
    spellcheck: "false",
    "aria-describedby": "token-help",
  });
  const error = h("p", { id: "signin-error", class: "error", role: "alert", hidden: !message }, message || "");
  const submit = h("button", { type: "submit", id: "signin-submit" }, "Sign in");
  const form = h(
    "form",
    { class: "card signin", id: "signin-form", "aria-labelledby": "signin-title", novalidate: true },
    h("h1", { id: "signin-title" }, "Sign in to Slipway"),
    h("label", { for: "token" }, "API token"),
    input,
    h(
      "p",
      { id: "token-help", class: "muted" },
      "The daemon's own token (the file ",
      h("code", {}, "token"),
      " in its data directory) or one made with ",
      h("code", {}, "slipway tokens create"),
      ". This browser keeps it in a cookie that scripts cannot read, until you sign out.",
    ),
    error,
    submit,
  );
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    error.hidden = true;
    banner("");
    const token = input.value.trim();
    if (!token) {
      showError(error, "Enter an API token.");
      input.focus();
      return;
    }
    let failure = null;
    await busy([submit, input], async () => {
      try {
        const s = await api("/panel/session", { method: "POST", body: { token } });
        input.value = "";
        session.scope = s.scope;
      } catch (e) {
        failure =
          e.status === 401
            ? "That token was not accepted: it is not valid, or it was revoked. Check it and try again."
            : e.message;
      }
    });
    if (failure) {
      showError(error, failure);
      input.focus();
      input.select();
      return;
    }
    render();
  });
  $("#main").replaceChildren(form);
  input.focus();
}

async function signOut() {
  const button = $("#sign-out");
  try {
    await busy([button], () => api("/panel/session", { method: "DELETE" }));
  } catch (e) {
    banner(e.message);
    return;
  }
  session.scope = null;
  if (session.page) session.page.abort();
  renderSignIn("", "You are signed out.");
}

// ---------------------------------------------------------------------------------------------
// Apps

async function renderApps(signal) {
  const data = await api("/v2/apps?per_page=200", { signal });
  const apps = data.apps || [];
  const latest = await Promise.all(
    apps.map((a) =>
      api(`/v2/apps/${enc(a.id)}/deployments?per_page=1`, { signal })
        .then((d) => (d.deployments || [])[0] || null)
        .catch((e) => {
          if (e.name === "AbortError") throw e;
          return null;
        }),
    ),
  );
  const rows = apps.map((a, i) => {
    const newest = latest[i];
    const active = a.active_deployment;
    return h(
      "tr",
      { "data-app": a.spec.name },
      h("td", {}, h("a", { href: `#/apps/${enc(a.id)}`, class: "app-link" }, a.spec.name)),
      h(
        "td",
        {},
        active
          ? [
              h("a", { href: `#/apps/${enc(a.id)}/deployments/${enc(active.id)}` }, active.cause),
              h("div", { class: "muted mono" }, `${shortId(active.id)} · ${fmtTime(active.created_at)}`),
            ]
          : h("span", { class: "muted" }, "none yet"),
      ),
      h(
        "td",
        {},
        newest
          ? h(
              "a",
              { href: `#/apps/${enc(a.id)}/deployments/${enc(newest.id)}`, title: `Newest deployment: ${newest.cause}` },
              phaseBadge(newest.phase),
            )
          : "—",
      ),
      h(
        "td",
        {},
        a.live_url ? h("a", { href: a.live_url, target: "_blank", rel: "noopener noreferrer" }, a.live_url) : h("span", { class: "muted" }, "no services"),
      ),
    );
  });
  mount(
    signal,
    h("div", { class: "page-head" }, h("div", { class: "grow" }, h("h1", {}, "Apps"), h("p", { class: "muted" }, `${apps.length} app${apps.length === 1 ? "" : "s"} on this daemon`))),
    h(
      "div",
      { class: "card" },
      apps.length
        ? h(
            "table",
            { id: "apps" },
            h("thead", {}, h("tr", {}, h("th", {}, "App"), h("th", {}, "Active deployment"), h("th", {}, "Phase"), h("th", {}, "Live URL"))),
            h("tbody", {}, rows),
          )
        : h("p", { class: "muted" }, "No apps yet. Create one with ", h("code", {}, "slipway apps create --spec app.yaml"), "."),
    ),
  );
}

// ---------------------------------------------------------------------------------------------
// An app

async function loadApp(appId, signal) {
  const [app, inst, deps] = await Promise.all([
    api(`/v2/apps/${enc(appId)}`, { signal }),
    api(`/v2/apps/${enc(appId)}/instances`, { signal }),
    api(`/v2/apps/${enc(appId)}/deployments?per_page=20`, { signal }),
  ]);
  return { app: app.app, inst, deployments: deps.deployments || [], total: (deps.meta || {}).total || 0 };
}

async function renderApp(signal, appId) {
  let data = await loadApp(appId, signal);
  const app = data.app;
  const notice = h("div", { id: "in-progress" });
  const domains = h("div", { id: "domains-card" });
  const components = h("div", { id: "components" });
  const deployments = h("div", { id: "deployments" });
  let shown = "";
  const show = (d) => {
    // Redraw only what changed, so that nothing moves under the reader for no reason.
    const now = JSON.stringify([d.app, d.inst, d.deployments, d.total]);
    if (now === shown) return;
    shown = now;
    fill(notice, inProgressNotice(d.app));
    fill(domains, domainsView(d.app));
    fill(components, componentsView(d.inst));
    fill(deployments, deploymentsView(d.app, d.deployments, d.total));
  };
  show(data);
  const head = h(
    "div",
    { class: "page-head" },
    h(
      "div",
      { class: "grow" },
      h("div", { class: "crumbs" }, h("a", { href: "#/" }, "Apps"), " /"),
      h("h1", { id: "app-name" }, app.spec.name),
      h(
        "div",
        { class: "meta" },
        app.live_url
          ? h("span", {}, "Live at ", h("a", { href: app.live_url, target: "_blank", rel: "noopener noreferrer", id: "live-url" }, app.live_url))
          : null,
        h("span", {}, "ID ", h("span", { class: "mono" }, app.id)),
        h("span", {}, "Created ", fmtTime(app.created_at)),
      ),
    ),
    actionsMenu(app, () => data, signal),
  );
  if (
    !mount(
      signal,
      head,
      notice,
      domains,
      h("section", { class: "card", "aria-labelledby": "components-title" }, h("h2", { id: "components-title" }, "Components"), components),
      h("section", { class: "card", "aria-labelledby": "deployments-title" }, h("h2", { id: "deployments-title" }, "Deployments"), deployments),
    )
  ) {
    return;
  }
  // Follow the app: every deployment event refreshes the components and the deployments.
  let timer = null;
  const refresh = () => {
    clearTimeout(timer);
    timer = setTimeout(async () => {
      try {
        data = await loadApp(app.id, signal);
        if (!signal.aborted) show(data);
      } catch (e) {
        if (e.name !== "AbortError" && e.status !== 401 && !signal.aborted) banner(e.message);
      }
    }, 250);
  };
  watchEvents(app.id, signal, () => refresh());
  const poll = setInterval(refresh, 10000);
  signal.addEventListener("abort", () => {
    clearInterval(poll);
    clearTimeout(timer);
  });
}

/** The app's domains, each with where its certificate is (and why not, when it failed). */
function domainsView(app) {
  const domains = app.domains || [];
  if (!domains.length) return "";
  return h(
    "section",
    { class: "card", "aria-labelledby": "domains-title" },
    h("h2", { id: "domains-title" }, "Domains"),
    h(
      "table",
      { id: "domains" },
      h("thead", {}, h("tr", {}, h("th", {}, "Domain"), h("th", {}, "Type"), h("th", {}, "Certificate"), h("th", {}, ""))),
      h(
        "tbody",
        {},
        domains.map((d) =>
          h(
            "tr",
            { "data-domain": d.id },
            h("td", { class: "mono" }, d.spec.wildcard ? `${d.id} (and its subdomains)` : d.id),
            h("td", {}, d.spec.type || "ALIAS"),
            h("td", {}, phaseBadge(d.phase)),
            h(
              "td",
              { class: d.error ? "error-text" : "muted" },
              d.error || (d.certificate_expires_at ? `expires ${fmtTime(d.certificate_expires_at)}` : d.phase === "PENDING" ? "served once a deployment of this spec is active" : ""),
            ),
          ),
        ),
      ),
    ),
  );
}

function inProgressNotice(app) {
  const d = app.in_progress_deployment || app.pending_deployment;
  if (!d) return "";
  return h(
    "div",
    { class: "banner info", role: "status" },
    "A deployment is in progress (",
    d.cause,
    "): ",
    phaseBadge(d.phase),
    " ",
    h("a", { href: `#/apps/${enc(app.id)}/deployments/${enc(d.id)}` }, "follow it"),
  );
}

function componentsView(inst) {
  const comps = inst.components || [];
  if (!comps.length) return h("p", { class: "muted" }, "This app has no components.");
  return KINDS.filter(([kind]) => comps.some((c) => c.kind === kind)).map(([kind, title]) =>
    h(
      "div",
      { class: "kind-group" },
      h("h3", {}, title),
      comps.filter((c) => c.kind === kind).map(componentView),
    ),
  );
}

function componentView(c) {
  const running = c.instances.filter((i) => i.state === "running").length;
  let count;
  if (c.instance_count !== null && c.instance_count !== undefined) {
    count = `${running} of ${c.instance_count} instance${c.instance_count === 1 ? "" : "s"} running`;
  } else if (c.kind === "job") {
    count = `${c.instances.length} container${c.instances.length === 1 ? "" : "s"} from past runs`;
  } else {
    count = `${running} running`;
  }
  const image = c.image
    ? [
        "Image ",
        h("code", {}, c.image.reference || shortId(c.image.id)),
        c.image.id ? [" · ", h("code", { title: c.image.id }, shortId(c.image.id))] : null,
      ]
    : ["No image deployed yet"];
  return h(
    "div",
    { class: "component", "data-component": c.name, "data-kind": c.kind },
    h("div", { class: "component-head" }, h("h3", {}, c.name), h("span", { class: "count" }, count)),
    h("div", { class: "image" }, image, c.commit ? [" · commit ", h("code", { title: c.commit, class: "commit" }, c.commit.slice(0, 12))] : null),
    c.instances.length
      ? h(
          "ul",
          { class: "instances", "aria-label": `Instances of ${c.name}` },
          c.instances.map((i) =>
            h(
              "li",
              { "data-instance-id": i.id, "data-state": i.state },
              h("span", { class: `state ${i.state}` }, i.state),
              h("code", {}, i.name),
              h("span", { class: "id mono", title: i.id }, shortId(i.id)),
              i.ports && i.ports.length ? h("span", { class: "muted" }, i.ports.map((p) => `${p.container_port} → ${p.host_ip}:${p.host_port}`).join(", ")) : null,
            ),
          ),
        )
      : h("p", { class: "muted" }, c.kind === "job" ? "No containers: jobs run during deployments." : "No containers."),
  );
}

function deploymentsView(app, deployments, total) {
  if (!deployments.length) return h("p", { class: "muted" }, "No deployments yet.");
  return [
    h(
      "table",
      { id: "deployments-table" },
      h("thead", {}, h("tr", {}, h("th", {}, "Cause"), h("th", {}, "Phase"), h("th", {}, "Created"), h("th", {}, "Duration"))),
      h(
        "tbody",
        {},
        deployments.map((d) =>
          h(
            "tr",
            { "data-deployment-id": d.id },
            h(
              "td",
              {},
              h("a", { href: `#/apps/${enc(app.id)}/deployments/${enc(d.id)}` }, d.cause),
              h("div", { class: "muted mono" }, shortId(d.id)),
            ),
            h("td", {}, phaseBadge(d.phase), d.error ? h("div", { class: "muted mono", title: d.error.message }, d.error.code) : null),
            h("td", {}, fmtTime(d.created_at)),
            h("td", {}, TERMINAL.has(d.phase) ? fmtDuration(deploymentDuration(d)) : `${fmtDuration(deploymentDuration(d))} so far`),
          ),
        ),
      ),
    ),
    total > deployments.length ? h("p", { class: "muted" }, `The ${deployments.length} newest of ${total}.`) : null,
  ];
}

/** Follows the app's Server-Sent Events; `onEvent(name, data)` is called for each. */
function watchEvents(appId, signal, onEvent) {
  if (signal.aborted || !window.EventSource) return;
  const source = new EventSource(`/v2/apps/${enc(appId)}/events`);
  for (const name of ["ready", "deployment.created", "deployment.phase", "step.started", "step.finished", "deployment.finished", "lagged"]) {
    source.addEventListener(name, (ev) => {
      let data = {};
      try {
        data = JSON.parse(ev.data);
      } catch (_) {
        data = {};
      }
      onEvent(name, data);
    });
  }
  signal.addEventListener("abort", () => source.close());
}

// ---------------------------------------------------------------------------------------------
// The Actions menu and its dialogs

function actionsMenu(app, current, signal) {
  const readOnly = session.scope === "read-only";
  const button = h(
    "button",
    {
      type: "button",
      id: "actions-button",
      class: "secondary",
      "aria-haspopup": "menu",
      "aria-expanded": "false",
      "aria-controls": "actions-menu",
      disabled: readOnly,
      title: readOnly ? "Your token is read-only: it cannot restart or deploy." : null,
    },
    "Actions ▾",
  );
  const list = h("ul", { role: "menu", id: "actions-menu", "aria-labelledby": "actions-button", hidden: true });
  const close = (focusButton) => {
    list.hidden = true;
    button.setAttribute("aria-expanded", "false");
    if (focusButton) button.focus();
  };
  const open = (which) => {
    list.hidden = false;
    button.setAttribute("aria-expanded", "true");
    const items = $$("[role=menuitem]", list);
    (which === "last" ? items[items.length - 1] : items[0]).focus();
  };
  const item = (id, label, hint, onSelect) =>
    h(
      "li",
      { role: "none" },
      h(
        "button",
        {
          type: "button",
          role: "menuitem",
          id,
          tabindex: "-1",
          onclick: () => {
            // Focus goes back to the menu's button first: the dialog returns it there.
            close(true);
            onSelect();
          },
        },
        label,
        h("small", {}, hint),
      ),
    );
  list.append(
    item("action-restart", "Restart…", "New containers from the same images", () => openRestart(app, current().inst, button)),
    item("action-rebuild", "Force rebuild and deploy…", "Fetch the latest commit and build", () => openRebuild(app, button)),
  );
  button.addEventListener("click", () => (list.hidden ? open("first") : close(false)));
  button.addEventListener("keydown", (ev) => {
    if (ev.key === "ArrowDown" || ev.key === "ArrowUp") {
      ev.preventDefault();
      open(ev.key === "ArrowUp" ? "last" : "first");
    }
  });
  list.addEventListener("keydown", (ev) => {
    const items = $$("[role=menuitem]", list);
    const at = items.indexOf(document.activeElement);
    if (ev.key === "ArrowDown") {
      ev.preventDefault();
      items[(at + 1) % items.length].focus();
    } else if (ev.key === "ArrowUp") {
      ev.preventDefault();
      items[(at - 1 + items.length) % items.length].focus();
    } else if (ev.key === "Home") {
      ev.preventDefault();
      items[0].focus();
    } else if (ev.key === "End") {
      ev.preventDefault();
      items[items.length - 1].focus();
    } else if (ev.key === "Escape") {
      ev.preventDefault();
      close(true);
    } else if (ev.key === "Tab") {
      close(false);
    }
  });
  document.addEventListener(
    "click",
    (ev) => {
      if (!list.hidden && !wrapper.contains(ev.target)) close(false);
    },
    { signal },
  );
  const wrapper = h("div", { class: "menu" }, button, list);
  return h("div", {}, wrapper, readOnly ? h("p", { class: "muted" }, "Read-only token") : null);
}

/** What the open dialog acts on, and where focus goes back when it closes. */
const dialogs = { app: null, opener: null, busy: false };

function openDialog(dialog, app, opener, first) {
  dialogs.app = app;
  dialogs.opener = opener;
  dialogs.busy = false;
  $$(".dialog-app", dialog).forEach((el) => (el.textContent = app.spec.name));
  $$(".error", dialog).forEach((el) => (el.hidden = true));
  dialog.showModal();
  first.focus();
}

function openRestart(app, inst, opener) {
  const dialog = $("#restart-dialog");
  const box = $("#restart-components");
  box.replaceChildren(
    ...(inst.components || []).map((c) => {
      const id = `restart-component-${c.name}`;
      if (c.restartable) {
        return h(
          "label",
          { class: "choice", for: id },
          h("input", { type: "checkbox", id, name: "component", value: c.name, disabled: true, "data-restartable": "1" }),
          h("span", {}, c.name, " ", h("span", { class: "why" }, `(${c.kind})`)),
        );
      }
      const why = `${id}-why`;
      return h(
        "label",
        { class: "choice", for: id },
        h("input", { type: "checkbox", id, name: "component", value: c.name, disabled: true, "aria-describedby": why }),
        h("span", {}, c.name, " ", h("span", { class: "why", id: why }, `(${c.kind}: ${NOT_RESTARTABLE[c.kind] || "not restartable"})`)),
      );
    }),
  );
  $("#restart-all").checked = true;
  syncRestartChoices();
  openDialog(dialog, app, opener, $("#restart-all"));
}

function syncRestartChoices() {
  const some = $("#restart-some").checked;
  for (const box of $$("#restart-components input[data-restartable]")) box.disabled = !some || dialogs.busy;
}

function openRebuild(app, opener) {
  $("#rebuild-clear-cache").checked = false;
  openDialog($("#rebuild-dialog"), app, opener, $("#rebuild-clear-cache"));
}

/** Sends a dialog's request with its controls disabled; on success, follows the deployment. */
async function submitDialog(dialog, errorEl, request) {
  const controls = $$("button, input", dialog).filter((c) => !c.disabled);
  const submit = $("button[type=submit]", dialog);
  errorEl.hidden = true;
  dialogs.busy = true;
  let result = null;
  try {
    await busy([submit, ...controls.filter((c) => c !== submit)], async () => {
      try {
        result = await request();
      } catch (e) {
        if (e.status !== 401) showError(errorEl, e.message);
      }
    });
  } finally {
    dialogs.busy = false;
  }
  if (!result) {
    if (dialog.open) submit.focus();
    return;
  }
  const app = dialogs.app;
  dialogs.opener = null;
  dialog.close();
  location.hash = `#/apps/${enc(app.id)}/deployments/${enc(result.deployment.id)}`;
}

function wireDialogs() {
  for (const dialog of $$("dialog")) {
    // Escape closes a dialog, except while its request is in flight.
    dialog.addEventListener("cancel", (ev) => {
      if (dialogs.busy) ev.preventDefault();
    });
    dialog.addEventListener("close", () => {
      if (dialogs.opener && document.contains(dialogs.opener)) dialogs.opener.focus();
    });
    for (const b of $$("[data-close]", dialog)) {
      b.addEventListener("click", () => {
        if (!dialogs.busy) dialog.close();
      });
    }
    // A click on the backdrop (outside the form) closes it too.
    dialog.addEventListener("click", (ev) => {
      if (ev.target === dialog && !dialogs.busy) dialog.close();
    });
  }
  for (const radio of $$("input[name=restart-scope]")) radio.addEventListener("change", syncRestartChoices);

  $("#restart-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const dialog = $("#restart-dialog");
    const errorEl = $("#restart-error");
    const some = $("#restart-some").checked;
    const components = some ? $$("#restart-components input[data-restartable]:checked").map((c) => c.value) : [];
    if (some && !components.length) {
      showError(errorEl, "Choose at least one component, or restart all services and workers.");
      return;
    }
    const app = dialogs.app;
    submitDialog(dialog, errorEl, () =>
      api(`/v2/apps/${enc(app.id)}/restart`, { method: "POST", body: some ? { components } : {} }),
    ).then(syncRestartChoices);
  });

  $("#rebuild-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const app = dialogs.app;
    const clear = $("#rebuild-clear-cache").checked;
    submitDialog($("#rebuild-dialog"), $("#rebuild-error"), () =>
      api(`/v2/apps/${enc(app.id)}/deployments`, {
        method: "POST",
        body: { force_build: true, clear_build_cache: clear },
      }),
    );
  });
}

// ---------------------------------------------------------------------------------------------
// A deployment

function firstError(steps, path = []) {
  for (const s of steps || []) {
    const here = [...path, s.name];
    const inner = firstError(s.steps, here);
    if (inner) return inner;
    if (s.status === "ERROR" && s.reason) return { path: here.join("/"), step: s, reason: s.reason };
  }
  return null;
}

const STEP_WORDS = { PENDING: "pending", RUNNING: "running", SUCCESS: "done", ERROR: "failed" };

function stepTree(steps) {
  return h(
    "ul",
    { class: "steps" },
    steps.map((s) => {
      const took =
        s.started_at && s.ended_at
          ? fmtDuration(Date.parse(s.ended_at) - Date.parse(s.started_at))
          : s.started_at && s.status === "RUNNING"
            ? `${fmtDuration(Date.now() - Date.parse(s.started_at))} so far`
            : "";
      return h(
        "li",
        { class: "step", "data-step": s.name, "data-status": s.status },
        h(
          "div",
          { class: "step-line" },
          h("span", { class: `state ${s.status}` }, STEP_WORDS[s.status] || s.status),
          h("span", { class: "name" }, s.name),
          s.component_name && s.component_name !== s.name ? h("span", { class: "muted" }, s.component_name) : null,
          took ? h("span", { class: "took" }, took) : null,
        ),
        s.message_base ? h("div", { class: "message" }, s.message_base) : null,
        s.reason ? h("div", { class: "reason" }, s.reason.message, s.reason.code ? ` (${s.reason.code})` : "") : null,
        s.steps && s.steps.length ? stepTree(s.steps) : null,
      );
    }),
  );
}

function deploymentFacts(d) {
  const facts = [
    h("span", {}, "Cause ", h("b", { id: "deployment-cause" }, d.cause)),
    h("span", {}, "Created ", h("b", {}, fmtTime(d.created_at))),
    h("span", {}, TERMINAL.has(d.phase) ? "Took " : "Running for ", h("b", { id: "deployment-duration" }, fmtDuration(deploymentDuration(d)))),
  ];
  if (d.kind === "restart") {
    facts.push(h("span", {}, "Restarts ", h("b", {}, d.restart_components && d.restart_components.length ? d.restart_components.join(", ") : "all services and workers")));
  } else if (d.force_build) {
    facts.push(h("span", {}, h("b", {}, d.clear_build_cache ? "Force rebuild without build cache" : "Force rebuild")));
  }
  const commits = [...(d.services || []), ...(d.workers || []), ...(d.jobs || [])].filter((c) => c.source_commit_hash);
  const unique = [...new Set(commits.map((c) => c.source_commit_hash))];
  if (unique.length === 1) facts.push(h("span", {}, "Commit ", h("code", { title: unique[0] }, unique[0].slice(0, 12))));
  return facts;
}

function failureView(app, d) {
  if (d.phase !== "ERROR" && d.phase !== "CANCELED") return "";
  const f = firstError(d.progress && d.progress.steps);
  const what = d.phase === "CANCELED" ? "This deployment was canceled" : "This deployment failed";
  // The deployment's error is its stable code and the failing step's reason; a deployment
  // saved before it had one falls back to the step's own code.
  const code = d.error ? d.error.code : f && f.reason.code;
  const message = d.error ? d.error.message : f && f.reason.message;
  return h(
    "div",
    { class: "card failure", role: "status", id: "failure" },
    h("h2", {}, what, code ? " " : null, code ? h("code", { id: "failure-code" }, code) : null),
    message ? h("p", { id: "failure-reason" }, f ? `At ${f.path}: ${message}` : message) : null,
    h("p", { class: "muted" }, app.active_deployment ? "The active deployment keeps serving: nothing of this one was left running." : "Nothing of it was left running."),
  );
}

const LOGS = [
  ["BUILD", "Build", "Each component's build output.", "Nothing was built: a restart runs the images already deployed."],
  ["DEPLOY", "Deploy", "Jobs' output and every step of the rollout.", "Nothing was logged."],
  ["RUN", "Run", "What the app's containers write now.", "No output yet."],
];

function logSection([type, title, blurb]) {
  const id = `log-${type.toLowerCase()}`;
  const status = h("span", { class: "status", id: `${id}-status`, "aria-live": "polite" }, "");
  const pre = h("pre", { class: "log", id, tabindex: "0", "aria-label": `${title} log` });
  return { type, status, pre, el: h("section", { "aria-labelledby": `${id}-title` }, h("div", { class: "log-head" }, h("h3", { id: `${id}-title` }, `${title} log`), h("span", { class: "muted" }, blurb), status), pre) };
}

function appendLog(pre, text) {
  const atBottom = pre.scrollHeight - pre.scrollTop - pre.clientHeight < 32;
  pre.append(text);
  if (pre.textContent.length > 500000) pre.textContent = pre.textContent.slice(-400000);
  if (atBottom) pre.scrollTop = pre.scrollHeight;
}

/** Follows one log: the API hands out a signed live URL, read here as a stream of text. */
async function followLog(section, appId, depId, empty, signal) {
  section.pre.textContent = "";
  section.status.textContent = "connecting…";
  try {
    const urls = await api(`/v2/apps/${enc(appId)}/deployments/${enc(depId)}/logs?type=${section.type}`, { signal });
    // Same origin as the page, whatever host name the API put in the URL.
    const live = new URL(urls.live_url, location.href);
    const res = await fetch(live.pathname + live.search, { signal, credentials: "same-origin", cache: "no-store" });
    if (!res.ok) throw new ApiError(res.status, null, explain(res.status));
    section.status.textContent = "following live";
    const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      appendLog(section.pre, value);
    }
    section.status.textContent = "complete";
    if (!section.pre.textContent) section.pre.textContent = empty;
  } catch (e) {
    if (e.name === "AbortError" || signal.aborted) return;
    section.status.textContent = e.message ? `stopped: ${e.message}` : "stopped";
  }
}

async function renderDeployment(signal, appId, depId) {
  const [{ app }, first] = await Promise.all([
    api(`/v2/apps/${enc(appId)}`, { signal }),
    api(`/v2/apps/${enc(appId)}/deployments/${enc(depId)}`, { signal }),
  ]);
  let d = first.deployment;
  const phase = phaseBadge(d.phase, { id: "phase", "aria-live": "polite" });
  const facts = h("div", { class: "meta", id: "deployment-facts" });
  const failure = h("div", {});
  const steps = h("div", { id: "steps" });
  const update = (dep, appNow) => {
    d = dep;
    phase.className = `phase ${d.phase}`;
    phase.textContent = d.phase;
    fill(facts, deploymentFacts(d));
    fill(failure, failureView(appNow || app, d));
    fill(steps, d.progress && d.progress.steps && d.progress.steps.length ? stepTree(d.progress.steps) : h("p", { class: "muted" }, "Waiting for its turn: another deployment of this app runs first."));
  };
  update(d);
  const sections = LOGS.map(logSection);
  if (
    !mount(
      signal,
      h(
        "div",
        { class: "page-head" },
        h(
          "div",
          { class: "grow" },
          h("div", { class: "crumbs" }, h("a", { href: "#/" }, "Apps"), " / ", h("a", { href: `#/apps/${enc(app.id)}`, id: "back-to-app" }, app.spec.name), " /"),
          h("h1", {}, "Deployment ", h("span", { class: "mono" }, shortId(d.id)), " ", phase),
          facts,
        ),
      ),
      failure,
      h("section", { class: "card", "aria-labelledby": "steps-title" }, h("h2", { id: "steps-title" }, "Steps"), steps),
      h("section", { class: "card logs", "aria-labelledby": "logs-title" }, h("h2", { id: "logs-title" }, "Logs"), sections.map((s) => s.el)),
    )
  ) {
    return;
  }

  // The logs: BUILD and DEPLOY follow until the deployment ends; RUN follows the containers,
  // and starts again when the deployment ends (its new containers are then the ones to read).
  const run = { controller: null };
  const followRun = () => {
    if (run.controller) run.controller.abort();
    run.controller = new AbortController();
    const own = run.controller;
    signal.addEventListener("abort", () => own.abort());
    followLog(sections[2], app.id, d.id, LOGS[2][3], own.signal);
  };
  followLog(sections[0], app.id, d.id, LOGS[0][3], signal);
  followLog(sections[1], app.id, d.id, LOGS[1][3], signal);
  followRun();

  if (TERMINAL.has(d.phase)) return;
  // The step tree follows the app's events (and a slow poll, should the stream drop).
  let timer = null;
  let ended = false;
  const refresh = () => {
    clearTimeout(timer);
    timer = setTimeout(async () => {
      if (ended) return;
      try {
        const [{ deployment }, { app: appNow }] = await Promise.all([
          api(`/v2/apps/${enc(app.id)}/deployments/${enc(d.id)}`, { signal }),
          api(`/v2/apps/${enc(app.id)}`, { signal }),
        ]);
        if (signal.aborted) return;
        update(deployment, appNow);
        if (TERMINAL.has(deployment.phase)) {
          ended = true;
          stop();
          followRun();
        }
      } catch (e) {
        if (e.name !== "AbortError" && e.status !== 401 && !signal.aborted) banner(e.message);
      }
    }, 100);
  };
  const events = new AbortController();
  signal.addEventListener("abort", () => events.abort());
  watchEvents(app.id, events.signal, (name, data) => {
    if (name === "ready" || name === "lagged" || data.deployment_id === d.id) refresh();
  });
  const poll = setInterval(refresh, 4000);
  const tick = setInterval(() => {
    const el = $("#deployment-duration");
    if (el && !TERMINAL.has(d.phase)) el.textContent = fmtDuration(deploymentDuration(d));
  }, 1000);
  const stop = () => {
    clearInterval(poll);
    clearInterval(tick);
    events.abort();
  };
  signal.addEventListener("abort", () => {
    stop();
    clearTimeout(timer);
  });
}

// ---------------------------------------------------------------------------------------------
// Start

async function boot() {
  wireDialogs();
  $("#sign-out").addEventListener("click", signOut);
  window.addEventListener("hashchange", () => {
    render();
    $("#main").focus({ preventScroll: true });
  });
  let message = "";
  try {
    const s = await api("/panel/session");
    session.scope = s.signed_in ? s.scope : null;
    if (!s.signed_in && s.message) message = "Your session has ended: the token is no longer accepted (it may have been revoked). Sign in again.";
  } catch (e) {
    message = e.message;
  }
  if (session.scope) render();
  else renderSignIn(message);
}

boot();
