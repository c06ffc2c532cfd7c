'use strict';
// sio-app.js is a socket.io-client app the way a developer writes one against the gate. It runs
// one scenario and prints one JSON line per event it saw, then exits 0 (1 on a crash or after
// its time limit, with {"error":...}).
//
//   node sio-app.js '<json options>'
//
// Options:
//   url         the gate's http:// base URL (required)
//   nsp         namespace ("/" by default)
//   transports  socket.io-client's transports option (default: polling, then the upgrade)
//   token       a JWT, sent as tokenForm says
//   tokenForm   "query" (query: {access_token}), "header" (extraHeaders Authorization),
//               "cookie" (extraHeaders Cookie: <cookie>=<jwt>), "auth" (auth: {token})
//   cookie      the cookie's name for tokenForm "cookie"
//   scenario    what to do once connected:
//     "whoami"   ask the backend who it thinks we are; print {whoami}
//     "flood"    emit "chat" until the gate refuses; print what the app's listeners see:
//                {limited} from the "wsgate:limited" event, {disconnect}, then the reconnect's
//                {connect_error:{message,data,active}}
//     "batch"    emit count "chat" events in one tick (socket.io-client sends what it queued
//                while a POST was out in the next one), then "echo" in the same tick; print
//                {echo} (the ack, or the error that ended it), {limited} (the refusal event
//                that came before the disconnect, if any) and {writes} (POSTs on polling)
//     "refresh"  ask whoami, then drop the transport: socket.io-client reconnects, and its
//                reconnect_attempt listener (the README's) puts token2 in the query; ask whoami
//                again; print {before, after}
//     "read"     ask the backend for a busy room (rate per second for ms); print {received}
//     "idle"     stay connected for ms, then emit one "echo"; print {echo, transport}
//     "classes"  emit count "typing" events, then "chat" until the gate refuses one, then one
//                "echo"; print {limited} (the refusal event), {chats} (emitted up to the
//                refusal), {echo} (the ack, or the error that ended it) and {connected}
//     "drops"    emit count "typing" events, then 5 "chat" 20 ms apart, then one "echo" with
//                an ack; print {limited} (every refusal event, in order), {echo} and {connected}
//   token2      the token of the "refresh" scenario's reconnect
//   rate, ms, count  scenario parameters
//   limit       the time limit in ms (default 20000)

const { io } = require('socket.io-client');

function print(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

function clientOptions(o) {
  const opts = { reconnection: false, timeout: 5000 };
  if (o.transports) opts.transports = o.transports;
  switch (o.tokenForm) {
    case undefined:
      break;
    case 'query':
      opts.query = { access_token: o.token };
      break;
    case 'header':
      opts.extraHeaders = { Authorization: `Bearer ${o.token}` };
      break;
    case 'cookie':
      opts.extraHeaders = { Cookie: `${o.cookie}=${o.token}` };
      break;
    case 'auth':
      opts.auth = { token: o.token };
      break;
    default:
      throw new Error(`unknown tokenForm ${o.tokenForm}`);
  }
  return opts;
}

function connected(socket) {
  return new Promise((resolve, reject) => {
    socket.once('connect', resolve);
    socket.once('connect_error', (err) => reject(err));
  });
}

function transportOf(socket) {
  return socket.io.engine ? socket.io.engine.transport.name : '';
}

const scenarios = {
  async whoami(socket) {
    const who = await socket.timeout(5000).emitWithAck('whoami');
    print({ whoami: who, transport: transportOf(socket) });
  },

  async flood(socket, o) {
    if (!o.transports && transportOf(socket) !== 'websocket') {
      // The default transports: flood once the upgrade is done, so that the refusal meets
      // one transport.
      await new Promise((resolve) => socket.io.engine.once('upgrade', resolve));
    }
    const seen = new Promise((resolve) => {
      socket.on('wsgate:limited', (data) => print({ limited: data, transport: transportOf(socket) }));
      socket.on('disconnect', (reason) => {
        print({ disconnect: reason });
        // The app reconnects, as socket.io-client does on its own with reconnection on.
        setTimeout(() => socket.connect(), 50);
      });
      socket.on('connect_error', (err) => {
        print({ connect_error: { message: err.message, data: err.data ?? null, active: socket.active } });
        resolve();
      });
    });
    for (let i = 0; i < (o.count || 1000) && socket.connected; i++) {
      socket.emit('chat', `message-${i}`);
      if (i % 10 === 9) await new Promise((r) => setTimeout(r, 5));
    }
    await seen;
  },

  async batch(socket, o) {
    let limited = null;
    socket.on('wsgate:limited', (data) => (limited = data));
    // engine.io-client's "flush": one write of its transport (a POST on polling).
    let writes = 0;
    socket.io.engine.on('flush', () => writes++);
    for (let i = 0; i < o.count; i++) socket.emit('chat', `batch-${i}`);
    let echo;
    try {
      echo = await socket.timeout(5000).emitWithAck('echo', 'after the batch');
    } catch (err) {
      echo = { error: err.message };
    }
    print({ echo, limited, writes, connected: socket.connected, transport: transportOf(socket) });
  },

  async refresh(socket, o) {
    const before = await socket.timeout(5000).emitWithAck('whoami');
    socket.io.on('reconnect_attempt', () => {
      socket.io.opts.query = { access_token: o.token2 };
    });
    socket.io.reconnection(true);
    socket.io.reconnectionDelay(50);
    const reconnected = new Promise((resolve) => socket.once('connect', resolve));
    socket.io.engine.close();
    await reconnected;
    const after = await socket.timeout(5000).emitWithAck('whoami');
    print({ before, after, transport: transportOf(socket) });
  },

  async read(socket, o) {
    let received = 0;
    socket.on('chat', () => received++);
    const disconnects = [];
    socket.on('disconnect', (reason) => disconnects.push(reason));
    const done = new Promise((resolve) => socket.once('done', resolve));
    await socket.timeout(5000).emitWithAck('subscribe', { rate: o.rate, ms: o.ms });
    const sent = await done;
    print({ received, sent, disconnects, connected: socket.connected, transport: transportOf(socket) });
  },

  async classes(socket, o) {
    let limited = null;
    socket.on('wsgate:limited', (data) => (limited = data));
    for (let i = 0; i < o.count; i++) socket.emit('typing', i);
    let chats = 0;
    while (!limited && chats < 50) {
      socket.emit('chat', `chat-${chats++}`);
      await new Promise((r) => setTimeout(r, 20));
    }
    let echo;
    try {
      echo = await socket.timeout(3000).emitWithAck('echo', 'after the refusal');
    } catch (err) {
      echo = { error: err.message };
    }
    print({ limited, chats, echo, connected: socket.connected, transport: transportOf(socket) });
  },

  async drops(socket, o) {
    const limited = [];
    socket.on('wsgate:limited', (data) => limited.push(data));
    for (let i = 0; i < o.count; i++) socket.emit('typing', i);
    for (let i = 0; i < 5; i++) {
      socket.emit('chat', `chat-${i}`);
      await new Promise((r) => setTimeout(r, 20));
    }
    let echo;
    try {
      echo = await socket.timeout(3000).emitWithAck('echo', 'after the drops');
    } catch (err) {
      echo = { error: err.message };
    }
    // The refusal events come with the answer that carries the ack, or before it.
    await new Promise((r) => setTimeout(r, 100));
    print({ limited, echo, connected: socket.connected, transport: transportOf(socket) });
  },

  async idle(socket, o) {
    const disconnects = [];
    socket.on('disconnect', (reason) => disconnects.push(reason));
    await new Promise((r) => setTimeout(r, o.ms));
    const echo = socket.connected ? await socket.timeout(5000).emitWithAck('echo', 'still here') : null;
    print({ echo, disconnects, transport: transportOf(socket) });
  },
};

async function main() {
  const o = JSON.parse(process.argv[2] || '{}');
  if (!o.url || !scenarios[o.scenario]) {
    process.stderr.write('usage: node sio-app.js \'{"url":...,"scenario":...}\'\n');
    process.exit(2);
  }
  const timer = setTimeout(() => {
    print({ error: 'time limit' });
    process.exit(1);
  }, o.limit || 20000);
  const socket = io(o.url + (o.nsp && o.nsp !== '/' ? o.nsp : ''), clientOptions(o));
  try {
    await connected(socket);
  } catch (err) {
    print({ connect_error: { message: err.message, description: err.description ?? null, data: err.data ?? null } });
    clearTimeout(timer);
    socket.disconnect();
    process.exit(0);
  }
  print({ connected: true, transport: transportOf(socket) });
  await scenarios[o.scenario](socket, o);
  clearTimeout(timer);
  socket.disconnect();
  process.exit(0);
}

main().catch((err) => {
  print({ error: err && err.message ? err.message : String(err) });
  process.exit(1);
});
