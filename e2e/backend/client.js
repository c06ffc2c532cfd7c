'use strict';
// client.js is a Node `ws` client for wsgate's end-to-end tests. It checks the handshake answer
// strictly: a subprotocol the client did not offer fails it, as in browsers, and so does no
// subprotocol at all when the client offered some (stricter than browsers, which accept that).
// It prints one JSON line per event on stdout:
//
//   {"open":true,"protocol":"chat"}
//   {"error":"...","status":403,"body":"..."}   handshake refused (status 0 when there was no response)
//   {"message":"...","binary":false,"length":N}
//   {"close":1000,"reason":"..."}
//
//   node client.js <url> [--protocols a,b] [--send text]... [--send-binary text]... [--expect N]
//                        [--header K:V]... [--close-code C] [--close-reason R] [--timeout ms]
//
// It sends the --send messages in order once open, closes with 1000 (or --close-code,
// --close-reason) after --expect messages were received (at once after sending when --expect is
// 0; without --expect it waits for the peer to close), and exits 0. It exits 1 on a usage error or
// when --timeout (10 s) passes first.

const WebSocket = require('ws');

function usage(msg) {
  process.stderr.write(`client.js: ${msg}\n`);
  process.exit(1);
}

function parseArgs(argv) {
  const args = {
    url: '',
    protocols: [],
    sends: [],
    expect: -1,
    headers: {},
    timeout: 10000,
    closeCode: 1000,
    closeReason: '',
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const next = () => {
      if (i + 1 >= argv.length) usage(`${a} needs a value`);
      return argv[++i];
    };
    switch (a) {
      case '--protocols':
        args.protocols = next().split(',').map((s) => s.trim()).filter(Boolean);
        break;
      case '--send':
        args.sends.push({ data: next(), binary: false });
        break;
      case '--send-binary':
        args.sends.push({ data: Buffer.from(next()), binary: true });
        break;
      case '--expect':
        args.expect = Number(next());
        break;
      case '--header': {
        const kv = next();
        const at = kv.indexOf(':');
        if (at <= 0) usage(`bad --header ${kv}`);
        args.headers[kv.slice(0, at).trim()] = kv.slice(at + 1).trim();
        break;
      }
      case '--close-code':
        args.closeCode = Number(next());
        break;
      case '--close-reason':
        args.closeReason = next();
        break;
      case '--timeout':
        args.timeout = Number(next());
        break;
      default:
        if (a.startsWith('--') || args.url) usage(`unexpected argument ${a}`);
        args.url = a;
    }
  }
  if (!args.url) usage('missing url');
  return args;
}

// print writes one JSON line; stdout is a pipe under the tests, where Node writes synchronously.
function print(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

function main() {
  const args = parseArgs(process.argv.slice(2));
  const timer = setTimeout(() => {
    print({ error: 'timeout' });
    process.exit(1);
  }, args.timeout);

  const ws = new WebSocket(args.url, args.protocols.length ? args.protocols : undefined, {
    headers: args.headers,
    handshakeTimeout: args.timeout,
  });
  let received = 0;
  let failed = false;

  const done = (code) => {
    clearTimeout(timer);
    process.exit(code);
  };

  ws.on('unexpected-response', (req, res) => {
    failed = true;
    const chunks = [];
    res.on('data', (c) => chunks.push(c));
    const finish = () => {
      print({
        error: `unexpected server response: ${res.statusCode}`,
        status: res.statusCode,
        body: Buffer.concat(chunks).toString(),
      });
      req.destroy();
      done(0);
    };
    res.on('end', finish);
    res.on('error', finish);
    res.on('aborted', finish);
  });

  ws.on('open', () => {
    print({ open: true, protocol: ws.protocol });
    for (const m of args.sends) ws.send(m.data, { binary: m.binary });
    if (args.expect === 0) ws.close(args.closeCode, args.closeReason);
  });

  ws.on('message', (data, isBinary) => {
    const buf = Buffer.isBuffer(data) ? data : Buffer.concat([].concat(data));
    received++;
    print({ message: buf.toString(), binary: isBinary, length: buf.length });
    if (args.expect > 0 && received === args.expect) ws.close(args.closeCode, args.closeReason);
  });

  ws.on('error', (err) => {
    if (failed) return;
    failed = true;
    print({ error: err.message, status: 0 });
  });

  ws.on('close', (code, reason) => {
    print({ close: code, reason: reason.toString() });
    done(0);
  });
}

main();
