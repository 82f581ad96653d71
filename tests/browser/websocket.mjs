// Drives the gateway's WebSocket endpoint (`GET /api/ws`) through third-party clients outside
// Rust, and prints what they observed for tests/integration/websocket_clients.rs to assert on:
//
//   node tests/browser/websocket.mjs <scenario> <base-url> <subscriber-token> <service-token> <org>
//
// Scenarios:
//   node-deflate  the npm `ws` client, permessage-deflate on, token in `Authorization: Bearer`:
//                 a large and a small event published, each with the frame it came in
//   node-types    the same client sends `types` ops (its messages compressed too) and publishes
//                 around them: which events arrive before and after
//   chromium      Chromium's own WebSocket (headless Debian Chromium driven by playwright-core,
//                 never a downloaded browser) in a page of the gateway's origin, token in
//                 `access_token`: connected, a large and a small event, ping/pong, the
//                 negotiated extensions and the handshake's headers as Chromium sent and got them
//
// Prints `step: ...` lines as it goes, then one `result: <JSON>` line and `ok`, exit 0. Any step
// that fails or does not finish in time prints `failed: ...` and exits 1; the whole run has a
// deadline, so it never hangs.

import { WebSocket } from "ws";

const [scenario, base, subscriberToken, serviceToken, org] = process.argv.slice(2);
const STEP_MS = 10_000;
const RUN_MS = Number(process.env.SCRIPT_DEADLINE_MS || 60_000);
const wsBase = base?.replace(/^http/, "ws");

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

/** `POST /api/publish` of `envelopes` (one batch, in order) with the service token; the ids. */
async function publish(envelopes) {
  const response = await within(
    STEP_MS,
    "POST /api/publish",
    fetch(`${base}/api/publish`, {
      method: "POST",
      headers: { Authorization: `Bearer ${serviceToken}`, "Content-Type": "application/json" },
      body: JSON.stringify(envelopes),
    }),
  );
  const body = await response.text();
  if (response.status !== 202) throw new Error(`publish answered ${response.status}: ${body}`);
  const { ids } = JSON.parse(body);
  if (!Array.isArray(ids) || ids.length !== envelopes.length) throw new Error(`publish answered ${body}`);
  return envelopes.map((envelope, i) => ({ type: envelope.type, data: envelope.data, id: ids[i] }));
}

/** A data object whose JSON is about `bytes` long: line items much alike, as real events are. */
function largeData(bytes) {
  const items = [];
  for (let n = 0; JSON.stringify(items).length < bytes; n++) {
    items.push({ sku: `SKU-${1000 + n}`, description: `replacement part number ${n}`, quantity: n % 7 });
  }
  return { title: "a large event", items };
}

/**
 * The WebSocket frames of a byte stream, by their headers: `feed` it the bytes in order and
 * `frames` lists each whole frame seen (client frames are masked, the gateway's are not).
 */
function frameParser() {
  const frames = [];
  let pending = Buffer.alloc(0);
  const feed = (chunk) => {
    pending = Buffer.concat([pending, Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk)]);
    for (;;) {
      if (pending.length < 2) return;
      const [first, second] = pending;
      let length = second & 0x7f;
      let header = 2;
      if (length === 126) {
        if (pending.length < 4) return;
        length = pending.readUInt16BE(2);
        header = 4;
      } else if (length === 127) {
        if (pending.length < 10) return;
        length = Number(pending.readBigUInt64BE(2));
        header = 10;
      }
      if (second & 0x80) header += 4;
      if (pending.length < header + length) return;
      frames.push({
        fin: Boolean(first & 0x80),
        compressed: Boolean(first & 0x40),
        opcode: first & 0x0f,
        payloadBytes: length,
      });
      pending = pending.subarray(header + length);
    }
  };
  return { frames, feed };
}

/**
 * The frames that cross `socket` after the 101's headers, each way. Tapped on ws's `open`
 * event: ws has put the bytes that came with the 101 back into the socket and listens to it,
 * and the tap goes before its listener, so each frame is seen once and before its message is;
 * every frame ws sends after that goes through `socket.write`.
 */
function tapFrames(socket) {
  const received = frameParser();
  const sent = frameParser();
  socket.prependListener("data", received.feed);
  const write = socket.write;
  socket.write = function (chunk, ...rest) {
    sent.feed(chunk);
    return write.call(this, chunk, ...rest);
  };
  return { received: received.frames, sent: sent.frames };
}

/**
 * A Node `ws` client on /api/ws: every message parsed as JSON, keepalives skipped, each with
 * the wire frame it came in (`frame`).
 */
async function openNode(query, perMessageDeflate) {
  const ws = new WebSocket(`${wsBase}/api/ws${query}`, {
    headers: { Authorization: `Bearer ${subscriberToken}` },
    perMessageDeflate,
    handshakeTimeout: STEP_MS,
  });
  cleanups.push(() => ws.terminate());
  let frames = { received: [], sent: [] };
  let socket = null;
  let extensionsHeader = null;
  ws.on("upgrade", (response) => {
    socket = response.socket;
    extensionsHeader = response.headers["sec-websocket-extensions"] ?? null;
  });
  ws.on("open", () => {
    frames = tapFrames(socket);
  });
  const inbox = [];
  const waiters = [];
  let textFrames = 0;
  let closed = null;
  ws.on("message", (raw, isBinary) => {
    const frame = frames.received.filter((f) => f.opcode === 1)[textFrames++] ?? null;
    let message;
    try {
      message = isBinary ? { binary: true } : JSON.parse(raw.toString("utf8"));
    } catch {
      message = { unparsable: raw.toString("utf8") };
    }
    if (message.event === "keepalive") return;
    message.frame = frame;
    message.plainBytes = raw.length;
    inbox.push(message);
    waiters.splice(0).forEach((wake) => wake());
  });
  ws.on("close", (code, reason) => {
    closed = { code, reason: reason.toString() };
    waiters.splice(0).forEach((wake) => wake());
  });
  ws.on("error", (error) => {
    closed = closed ?? { error: error.message };
    waiters.splice(0).forEach((wake) => wake());
  });
  await within(
    STEP_MS,
    "the WebSocket to open",
    new Promise((resolve, reject) => {
      ws.once("open", resolve);
      ws.once("unexpected-response", (_, response) => {
        let body = "";
        response.on("data", (chunk) => (body += chunk));
        response.on("end", () => reject(new Error(`the handshake answered ${response.statusCode}: ${body}`)));
      });
      ws.once("error", reject);
    }),
  );
  /** The next message (keepalives skipped). */
  const next = (what) =>
    within(
      STEP_MS,
      what,
      new Promise((resolve, reject) => {
        const check = () => {
          if (inbox.length) return resolve(inbox.shift());
          if (closed) return reject(new Error(`the connection closed (${JSON.stringify(closed)}) before ${what}`));
          waiters.push(check);
        };
        check();
      }),
    );
  /** The next message, which must be `event`. */
  const expect = async (event) => {
    const message = await next(`the ${event} message`);
    if (message.event !== event) throw new Error(`expected ${event}, got ${JSON.stringify(message)}`);
    return message;
  };
  const send = (op) => ws.send(JSON.stringify(op));
  // ws.extensions names the extensions only; the 101's header has their parameters.
  return { ws, next, expect, send, extensions: () => extensionsHeader, sentFrames: () => frames.sent };
}

/** The parts of a received event the Rust side compares with what was published. */
const received = ({ event, data, id, frame, plainBytes }) => ({ event, data, id, frame, plainBytes });

async function nodeDeflate() {
  step("a Node ws client with permessage-deflate connects with a Bearer token");
  const client = await openNode("", true);
  const connected = await client.expect("connected");

  step("a large and a small event are published and arrive");
  const published = await publish([
    { type: "ticket.created", orgId: org, data: largeData(2048) },
    { type: "ticket.updated", orgId: org, data: { n: 1, status: "open" } },
  ]);
  const events = [];
  for (const { type } of published) events.push(received(await client.expect(type)));

  step("ack of the last id is confirmed on the same connection");
  client.send({ op: "ack", lastEventId: published[1].id });
  const ack = await client.expect("ack");

  client.ws.close(1000);
  return {
    extensions: client.ws.extensions,
    extensionsHeader: client.extensions(),
    connected: connected.data,
    connectedFrame: connected.frame,
    published,
    events,
    ack: ack.data,
  };
}

async function nodeTypes() {
  // threshold 0: ws compresses every message it sends, so the gateway inflates each op.
  step("a Node ws client subscribed to ticket.* connects, its own messages compressed");
  const client = await openNode("?types=ticket.*", { threshold: 0 });
  await client.expect("connected");

  step("before any op: ticket.* arrives, payment.* does not");
  const before = await publish([
    { type: "payment.received", orgId: org, data: { step: "before", n: 1 } },
    { type: "ticket.created", orgId: org, data: { step: "before", n: 2 } },
  ]);
  const beforeEvents = [received(await client.expect("ticket.created"))];

  step("a types op for payment.* is confirmed");
  client.send({ op: "types", types: ["payment.*"] });
  const confirmed = await client.expect("types");

  step("after it: payment.* arrives, ticket.* does not");
  const after = await publish([
    { type: "ticket.updated", orgId: org, data: { step: "after", n: 3 } },
    { type: "payment.received", orgId: org, data: { step: "after", n: 4 } },
  ]);
  const afterEvents = [received(await client.expect("payment.received"))];

  step("an invalid types op is answered with an error");
  client.send({ op: "types", types: ["Not A Type!"] });
  const invalid = await client.expect("error");

  step("an unknown op is answered with an error; the connection stays open");
  client.send({ op: "subscribe", types: ["ticket.*"] });
  const unknown = await client.expect("error");
  client.send({ op: "ping" });
  await client.expect("pong");

  step("after both errors the filter is still payment.*");
  const unchanged = await publish([
    { type: "ticket.reopened", orgId: org, data: { step: "unchanged", n: 5 } },
    { type: "payment.settled", orgId: org, data: { step: "unchanged", n: 6 } },
  ]);
  const unchangedEvents = [received(await client.expect("payment.settled"))];

  step("an empty types op lets every type through again");
  client.send({ op: "types", types: [] });
  const cleared = await client.expect("types");
  const all = await publish([
    { type: "ticket.closed", orgId: org, data: { step: "all", n: 7 } },
    { type: "payment.refunded", orgId: org, data: { step: "all", n: 8 } },
  ]);
  const allEvents = [];
  for (const { type } of all) allEvents.push(received(await client.expect(type)));

  client.ws.close(1000);
  return {
    extensions: client.ws.extensions,
    extensionsHeader: client.extensions(),
    before: { published: before, events: beforeEvents },
    confirmed: confirmed.data,
    after: { published: after, events: afterEvents },
    invalid: invalid.data,
    unknown: unknown.data,
    unchanged: { published: unchanged, events: unchangedEvents },
    cleared: cleared.data,
    sentFrames: client.sentFrames(),
    all: { published: all, events: allEvents },
  };
}

async function inChromium() {
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
  try {
    const page = await browser.newPage();
    page.setDefaultTimeout(STEP_MS);
    const problems = [];
    page.on("pageerror", (error) => problems.push(String(error)));
    // The handshake as Chromium's network stack sent and received it (the page cannot see it).
    const handshake = {};
    const cdp = await page.context().newCDPSession(page);
    await cdp.send("Network.enable");
    cdp.on("Network.webSocketWillSendHandshakeRequest", ({ request }) => {
      handshake.requestHeaders = request.headers;
    });
    cdp.on("Network.webSocketHandshakeResponseReceived", ({ response }) => {
      handshake.status = response.status;
      handshake.responseHeaders = response.headers;
      if (response.requestHeaders) handshake.requestHeaders = response.requestHeaders;
    });
    step("a page of the gateway's origin loads");
    // A page of the gateway's own origin, as an app page on an allowed origin would be. Not
    // about:blank: Chromium's Local Network Access checks refuse a WebSocket from its opaque
    // origin to a loopback address (net::ERR_BLOCKED_BY_LOCAL_NETWORK_ACCESS_CHECKS) before
    // any handshake, and a permission grant cannot reach an opaque origin.
    await page.goto(`${base}/healthz`);

    step("the page's own WebSocket connects with the token in access_token");
    const url = `${wsBase}/api/ws?access_token=${encodeURIComponent(subscriberToken)}`;
    await page.evaluate((url) => {
      // One global of the test's own (window.closed is the window's).
      const test = { socket: new WebSocket(url), received: [], closed: null };
      test.socket.onmessage = (message) => {
        const parsed = JSON.parse(message.data);
        if (parsed.event !== "keepalive") test.received.push(parsed);
      };
      test.socket.onclose = (close) => {
        test.closed = { code: close.code, reason: close.reason, wasClean: close.wasClean };
      };
      window.gatewayTest = test;
    }, url);
    const nextMessage = async (event) => {
      const handle = await page.waitForFunction(
        () => window.gatewayTest.received.length > 0 || window.gatewayTest.closed !== null,
        null,
        { timeout: STEP_MS },
      );
      await handle.dispose();
      const message = await page.evaluate(() => window.gatewayTest.received.shift() ?? { closed: window.gatewayTest.closed });
      if (message.event !== event) throw new Error(`expected ${event}, got ${JSON.stringify(message)}`);
      return message;
    };
    const connected = await nextMessage("connected");
    const opened = await page.evaluate(() => ({
      readyState: window.gatewayTest.socket.readyState,
      extensions: window.gatewayTest.socket.extensions,
      protocol: window.gatewayTest.socket.protocol,
    }));

    step("a large and a small published event arrive in the page");
    const published = await publish([
      { type: "ticket.created", orgId: org, data: largeData(2048) },
      { type: "ticket.updated", orgId: org, data: { n: 1, status: "open" } },
    ]);
    const events = [];
    for (const { type } of published) {
      const { event, data, id } = await nextMessage(type);
      events.push({ event, data, id });
    }

    step("a ping op is answered with pong");
    await page.evaluate(() => window.gatewayTest.socket.send(JSON.stringify({ op: "ping" })));
    const pong = await nextMessage("pong");

    step("the page closes its WebSocket");
    await page.evaluate(() => window.gatewayTest.socket.close(1000));
    await page.waitForFunction(() => window.gatewayTest.closed !== null);
    const closed = await page.evaluate(() => window.gatewayTest.closed);

    if (problems.length) throw new Error(`the page raised: ${problems.join("; ")}`);
    return {
      userAgent: await page.evaluate(() => navigator.userAgent),
      pageOrigin: await page.evaluate(() => window.origin),
      opened,
      handshake,
      connected: connected.data,
      published,
      events,
      pong,
      closed,
    };
  } finally {
    await browser.close();
  }
}

const scenarios = { "node-deflate": nodeDeflate, "node-types": nodeTypes, chromium: inChromium };
try {
  if (!scenarios[scenario] || !org) {
    throw new Error(`usage: websocket.mjs <${Object.keys(scenarios).join("|")}> <base-url> <subscriber-token> <service-token> <org>`);
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
