'use strict';
// sio-client.js connects to a socket.io server the way a browser does by default: long-polling
// first, then an upgrade to WebSocket. It emits "echo" twice (before and after the upgrade), waits
// for each ack, and prints one JSON line:
//
//   {"acks":["ping-1","ping-2"],"transport":"websocket"}
//
//   node sio-client.js <url>
//
// It exits 0 on success and 1 with {"error":"..."} on a connection error or after 10 s.

const { io } = require('socket.io-client');

const TIMEOUT_MS = 10000;

function print(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

async function main() {
  const url = process.argv[2];
  if (!url) {
    process.stderr.write('usage: node sio-client.js <url>\n');
    process.exit(1);
  }
  const socket = io(url, { reconnection: false, timeout: TIMEOUT_MS });
  const fail = (msg) => {
    print({ error: msg, transport: socket.io.engine ? socket.io.engine.transport.name : '' });
    socket.disconnect();
    process.exit(1);
  };
  const timer = setTimeout(() => fail('timeout'), TIMEOUT_MS);
  socket.on('connect_error', (err) => fail(`connect_error: ${err.message}`));

  await new Promise((resolve) => socket.once('connect', resolve));
  const acks = [];
  acks.push(await socket.timeout(TIMEOUT_MS).emitWithAck('echo', 'ping-1'));

  const engine = socket.io.engine;
  if (engine.transport.name !== 'websocket') {
    await new Promise((resolve) => {
      engine.once('upgrade', resolve);
      if (engine.transport.name === 'websocket') resolve();
    });
  }
  acks.push(await socket.timeout(TIMEOUT_MS).emitWithAck('echo', 'ping-2'));

  clearTimeout(timer);
  print({ acks, transport: engine.transport.name });
  socket.disconnect();
  process.exit(0);
}

main().catch((err) => {
  print({ error: err && err.message ? err.message : String(err) });
  process.exit(1);
});
