// Reads the gateway's compressed SSE streams (`GET /api/events`, `Content-Encoding: gzip`: one
// gzip stream of raw-deflate pieces, docs/protocol.md §14) through third-party EventSource
// clients outside Rust, and prints what they observed for
// tests/integration/compression_clients.rs to assert on:
//
//   node tests/browser/eventsource.mjs <scenario> <base-url> <subscriber-token> <service-token> <org>
//
// Scenarios:
//   chromium-incremental  Chromium's own EventSource (headless Debian Chromium driven by
//                         playwright-core, never a downloaded browser) in a page of the
//                         gateway's origin, token in `access_token`: 10 events published one at
//                         a time, each only after the page has seen the one before
//   node-incremental      the npm `eventsource` package (undici's fetch), token in
//                         `Authorization: Bearer` through its `fetch` option: the same 10 events
//   chromium-resume       Chromium's EventSource sees 3 events and closes; 4 more are published
//                         while nobody listens; a new EventSource with `lastEventId=<3rd id>`
//                         (query parameter) gets the 4 it missed, one published while it
//                         connects, then 2 more published live one at a time
//
// Every stream asks for gzip as its client does by itself (Chromium: `gzip, deflate, br,
// zstd`; undici: `gzip, deflate`); each scenario reports the request and response headers as
// the client's network stack saw them, so the Rust side can check gzip was negotiated.
//
// Prints `step: ...` lines as it goes, then one `result: <JSON>` line and `ok`, exit 0. Any step
// that fails or does not finish in time prints `failed: ...` and exits 1; the whole run has a
// deadline, so it never hangs.

import { randomUUID } from "node:crypto";
import diagnostics from "node:diagnostics_channel";

const [scenario, base, subscriberToken, serviceToken, org] = process.argv.slice(2);
const STEP_MS = 10_000;
const RUN_MS = Number(process.env.SCRIPT_DEADLINE_MS || 60_000);

/** Every event name a listener is added for: the gateway's own and the published types. */
const PUBLISHED_TYPES = ["ticket.created", "ticket.updated", "ticket.commented", "ticket.assigned", "ticket.closed"];
const LISTENED = ["connected", "history.truncated", "keepalive", "auth.expired", "message", ...PUBLISHED_TYPES];

let current = "starting";
const step = (what) => {
  current = what;
  console.log(`step: ${what}`);
};
const cleanups = [];
const deadline = setTimeout(async () => {
  console.error(`failed: the run's ${RUN_MS} ms deadline passed during step: ${current}`);
  await Promise.allSettled(cleanups.map((cleanup) => cleanup()));
  process.exit(1);
}, RUN_MS);

/** Rejects after `ms` with a message naming `what`. */
function within(ms, what, promise) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** `url` with the token's value hidden, for the result. */
const redacted = (url) => url.replace(/access_token=[^&]*/, "access_token=<token>");

/**
 * `POST /api/publish` of one envelope with the service token: what was published (type, the
 * exact data text sent, its id) and when (this process's clock, ms).
 */
async function publish(type, data) {
  const json = JSON.stringify(data);
  const publishedAt = Date.now();
  const response = await within(
    STEP_MS,
    "POST /api/publish",
    fetch(`${base}/api/publish`, {
      method: "POST",
      headers: { Authorization: `Bearer ${serviceToken}`, "Content-Type": "application/json" },
      body: `{"type":${JSON.stringify(type)},"orgId":${JSON.stringify(org)},"data":${json}}`,
    }),
  );
  const body = await response.text();
  if (response.status !== 202) throw new Error(`publish answered ${response.status}: ${body}`);
  const { ids } = JSON.parse(body);
  if (!Array.isArray(ids) || ids.length !== 1) throw new Error(`publish answered ${body}`);
  return { type, data: json, id: ids[0], publishedAt };
}

const STATUSES = ["open", "in_progress", "waiting_on_contractor", "resolved"];
const NAMES = ["Zoë Müller", "Amélie Dubois", "Łukasz Nowak", "Søren Østergaard", "Chidi Okafor"];

/**
 * The data of a realistic ticket event, its JSON at least `bytes` long: ids, names (some not
 * ASCII), timestamps, tags; grown with comments much alike, as a ticket's history is.
 */
function ticketData(n, bytes) {
  const data = {
    ticketId: randomUUID(),
    number: 4200 + n,
    title: `Leaking tap in flat ${n + 1}B`,
    status: STATUSES[n % STATUSES.length],
    priority: n % 3 === 0 ? "high" : "normal",
    property: { name: "Résidence Les Tilleuls", unit: `${n + 1}B` },
    reporter: { id: randomUUID(), name: NAMES[n % NAMES.length] },
    tags: ["plumbing", "kitchen"],
    updatedAt: new Date(Date.UTC(2026, 11, 1, 9, n, 7)).toISOString(),
  };
  for (let c = 0; JSON.stringify(data).length < bytes; c++) {
    data.comments ??= [];
    data.comments.push({
      id: randomUUID(),
      author: NAMES[c % NAMES.length],
      at: new Date(Date.UTC(2026, 11, 1, 10, c, 0)).toISOString(),
      text: `Visit ${c + 1}: the contractor checked the trap and the supply hoses; follow-up booked.`,
    });
  }
  return data;
}

/** The n-th event of a run: a type and data of about 300 bytes, or `bytes` when given. */
const nthEvent = (n, bytes = 300) => ({ type: PUBLISHED_TYPES[n % PUBLISHED_TYPES.length], data: ticketData(n, bytes) });

/**
 * Publishes `events` one at a time, each only after `client` has delivered the one before, and
 * returns what was published and received, with the order things happened in (`log`).
 */
async function publishOneAtATime(client, events, label) {
  const published = [];
  const received = [];
  const log = [];
  for (const [k, { type, data }] of events.entries()) {
    step(`${label}: event ${k + 1} of ${events.length} (${type}) is published and seen`);
    const sent = await publish(type, data);
    log.push(`published ${sent.id}`);
    const event = await client.next(`${label} event ${k + 1} (${sent.id})`);
    log.push(`seen ${event.id}`);
    published.push(sent);
    received.push(event);
  }
  return { published, received, log };
}

/** The shared steps of an incremental run, whichever the client. */
async function incremental(client) {
  step("the stream opens: connected");
  const connected = await client.next("the connected event");
  const events = Array.from({ length: 10 }, (_, n) => nthEvent(n, n === 6 ? 2048 : 300));
  const run = await publishOneAtATime(client, events, "live");
  return { connected, ...run };
}

async function openChromium() {
  const { chromium } = await import("playwright-core");
  step("headless Chromium starts");
  const browser = await within(
    30_000,
    "Chromium to start",
    chromium.launch({
      executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
      args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
    }),
  );
  cleanups.push(() => browser.close());
  const page = await browser.newPage();
  page.setDefaultTimeout(STEP_MS);
  const problems = [];
  page.on("pageerror", (error) => problems.push(String(error)));

  // Each /api/events response as Chromium's network stack got it (the page cannot see its
  // headers): the request's headers as sent, the response's as received.
  const responses = [];
  const pending = [];
  page.on("response", (response) => {
    if (!new URL(response.url()).pathname.startsWith("/api/events")) return;
    pending.push(
      (async () => {
        responses.push({
          url: redacted(response.url()),
          resourceType: response.request().resourceType(),
          status: response.status(),
          headers: await response.allHeaders(),
          requestHeaders: await response.request().allHeaders(),
        });
      })(),
    );
  });
  // Body bytes per /api/events request, as received (encoded) and as decoded, from the
  // DevTools protocol.
  const bytes = new Map();
  const cdp = await page.context().newCDPSession(page);
  await cdp.send("Network.enable");
  cdp.on("Network.requestWillBeSent", ({ requestId, request }) => {
    if (new URL(request.url).pathname.startsWith("/api/events")) {
      bytes.set(requestId, { url: redacted(request.url), decoded: 0, encoded: 0 });
    }
  });
  cdp.on("Network.dataReceived", ({ requestId, dataLength, encodedDataLength }) => {
    const seen = bytes.get(requestId);
    if (!seen) return;
    seen.decoded += dataLength;
    seen.encoded += encodedDataLength;
  });

  step("a page of the gateway's origin loads");
  // Not about:blank: Chromium's Local Network Access checks refuse a request from its opaque
  // origin to a loopback address (see websocket.mjs).
  await page.goto(`${base}/healthz`);
  await page.evaluate((listened) => {
    window.gatewayTest = { streams: {} };
    /** Opens an EventSource named `name`, recording every event, open and error it sees. */
    window.gatewayTest.open = (name, url) => {
      const stream = { source: new EventSource(url), events: [], opens: 0, errors: [] };
      for (const type of listened) {
        stream.source.addEventListener(type, (event) => {
          stream.events.push({ event: event.type, id: event.lastEventId, data: event.data, seenAt: Date.now() });
        });
      }
      stream.source.onopen = () => stream.opens++;
      stream.source.onerror = () => stream.errors.push({ readyState: stream.source.readyState, at: Date.now() });
      window.gatewayTest.streams[name] = stream;
    };
  }, LISTENED);

  /** An EventSource in the page, read one event at a time (keepalives set aside). */
  const open = async (name, query) => {
    const url = `${base}/api/events?access_token=${encodeURIComponent(subscriberToken)}${query}`;
    await page.evaluate(({ name, url }) => window.gatewayTest.open(name, url), { name, url });
    let taken = 0;
    const keepalives = [];
    const next = async (what) => {
      for (;;) {
        const handle = await page
          .waitForFunction(
            ({ name, taken }) => {
              const stream = window.gatewayTest.streams[name];
              return stream.events.length > taken || stream.source.readyState === EventSource.CLOSED;
            },
            { name, taken },
            { timeout: STEP_MS },
          )
          .catch((error) => {
            throw new Error(`${what}: ${error.message.split("\n")[0]}`);
          });
        await handle.dispose();
        const event = await page.evaluate(({ name, taken }) => window.gatewayTest.streams[name].events[taken] ?? null, {
          name,
          taken,
        });
        if (!event) throw new Error(`the EventSource closed before ${what}`);
        taken++;
        if (event.event === "keepalive") {
          keepalives.push(event);
          continue;
        }
        return event;
      }
    };
    const state = () =>
      page.evaluate((name) => {
        const { source, events, opens, errors } = window.gatewayTest.streams[name];
        return { readyState: source.readyState, events: events.length, opens, errors };
      }, name);
    const close = () => page.evaluate((name) => window.gatewayTest.streams[name].source.close(), name);
    return { next, state, close, keepalives };
  };
  const finish = async () => {
    await Promise.all(pending);
    if (problems.length) throw new Error(`the page raised: ${problems.join("; ")}`);
    return {
      userAgent: await page.evaluate(() => navigator.userAgent),
      responses,
      wireBytes: [...bytes.values()],
    };
  };
  return { open, finish };
}

async function chromiumIncremental() {
  const browser = await openChromium();
  step("the page's EventSource opens /api/events with the token in access_token");
  const client = await browser.open("live", "");
  const run = await incremental(client);
  const state = await client.state();
  await client.close();
  return { ...run, state, keepalives: client.keepalives, ...(await browser.finish()) };
}

async function chromiumResume() {
  const browser = await openChromium();
  step("a first EventSource sees 3 events, then closes");
  const first = await browser.open("first", "");
  const firstConnected = await first.next("the first stream's connected event");
  const before = await publishOneAtATime(first, [0, 1, 2].map((n) => nthEvent(n)), "before");
  const firstState = await first.state();
  await first.close();

  step("4 events are published while nobody listens (one of ~2 KB)");
  const missed = [];
  for (const n of [3, 4, 5, 6]) {
    const { type, data } = nthEvent(n, n === 5 ? 2048 : 300);
    missed.push(await publish(type, data));
  }

  step("a second EventSource resumes with lastEventId (query) of the 3rd event");
  const resumeFrom = before.published[2].id;
  const second = await browser.open("second", `&lastEventId=${encodeURIComponent(resumeFrom)}`);
  // Published as the stream opens: it must come once, after the replay, whether the replay or
  // the live subscription carries it.
  const seamEvent = nthEvent(7);
  const seam = await publish(seamEvent.type, seamEvent.data);
  const secondConnected = await second.next("the resumed stream's connected event");
  const replayed = [];
  for (const [k, event] of [...missed, seam].entries()) {
    step(`the resumed stream delivers missed event ${k + 1} of ${missed.length + 1}`);
    replayed.push(await second.next(`resumed event ${k + 1} (${event.id})`));
  }
  const live = await publishOneAtATime(second, [8, 9].map((n) => nthEvent(n)), "after");
  const secondState = await second.state();
  await second.close();
  return {
    first: { connected: firstConnected, ...before, state: firstState, keepalives: first.keepalives },
    missed,
    seam,
    resumeFrom,
    second: {
      connected: secondConnected,
      replayed,
      ...live,
      state: secondState,
      keepalives: second.keepalives,
    },
    ...(await browser.finish()),
  };
}

async function nodeIncremental() {
  const { EventSource } = await import("eventsource");
  // What undici put on the wire, and what came back, from its diagnostics channels (the
  // Response object that fetch returns has the headers decoded by undici itself).
  const wire = { requestHeaders: null, responseHeaders: null };
  const onHeaders = ({ request, headers }) => {
    if (request.path.startsWith("/api/events")) wire.requestHeaders = headers;
  };
  const onResponse = ({ request, response }) => {
    if (request.path.startsWith("/api/events")) {
      wire.responseHeaders = response.headers.map((value) => String(value));
    }
  };
  diagnostics.subscribe("undici:client:sendHeaders", onHeaders);
  diagnostics.subscribe("undici:request:headers", onResponse);
  cleanups.push(() => {
    diagnostics.unsubscribe("undici:client:sendHeaders", onHeaders);
    diagnostics.unsubscribe("undici:request:headers", onResponse);
  });

  step("an npm eventsource opens /api/events, its fetch adding the Bearer token");
  const fetches = [];
  const source = new EventSource(`${base}/api/events`, {
    fetch: async (input, init) => {
      const headers = { ...init.headers, Authorization: `Bearer ${subscriberToken}` };
      const response = await fetch(input, { ...init, headers });
      fetches.push({
        url: String(input),
        requestHeaders: { ...init.headers },
        status: response.status,
        contentEncoding: response.headers.get("content-encoding"),
        contentType: response.headers.get("content-type"),
        vary: response.headers.get("vary"),
      });
      return response;
    },
  });
  cleanups.push(() => source.close());
  const events = [];
  const keepalives = [];
  let opens = 0;
  const errors = [];
  const waiters = [];
  const wake = () => waiters.splice(0).forEach((w) => w());
  for (const type of LISTENED) {
    source.addEventListener(type, (event) => {
      const seen = { event: event.type, id: event.lastEventId, data: event.data, seenAt: Date.now() };
      (type === "keepalive" ? keepalives : events).push(seen);
      wake();
    });
  }
  source.onopen = () => opens++;
  source.onerror = (error) => {
    errors.push({ message: error.message ?? null, code: error.code ?? null, readyState: source.readyState });
    wake();
  };
  let taken = 0;
  const client = {
    next: (what) =>
      within(
        STEP_MS,
        what,
        new Promise((resolve, reject) => {
          const check = () => {
            if (events.length > taken) return resolve(events[taken++]);
            if (source.readyState === EventSource.CLOSED) {
              return reject(new Error(`the EventSource closed (${JSON.stringify(errors)}) before ${what}`));
            }
            waiters.push(check);
          };
          check();
        }),
      ),
  };
  const run = await incremental(client);
  const state = { readyState: source.readyState, events: events.length, opens, errors };
  source.close();
  return { ...run, state, keepalives, fetches, wire, node: process.version };
}

const scenarios = {
  "chromium-incremental": chromiumIncremental,
  "node-incremental": nodeIncremental,
  "chromium-resume": chromiumResume,
};
try {
  if (!scenarios[scenario] || !org) {
    throw new Error(
      `usage: eventsource.mjs <${Object.keys(scenarios).join("|")}> <base-url> <subscriber-token> <service-token> <org>`,
    );
  }
  const result = await scenarios[scenario]();
  console.log(`result: ${JSON.stringify(result)}`);
  console.log("ok");
} catch (error) {
  console.error(`failed at step "${current}": ${error.message}`);
  process.exitCode = 1;
} finally {
  clearTimeout(deadline);
  await Promise.allSettled(cleanups.map((cleanup) => cleanup()));
}
