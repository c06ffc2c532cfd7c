'use strict';
// server.js is the unmodified Node backend that wsgate's end-to-end tests put behind the gate:
// a `ws` WebSocket server with one behaviour per path, a socket.io server, and a few plain HTTP
// routes, all on one HTTP server.
//
//   node server.js --port N     (0 picks a free port; prints "LISTENING <port>" when ready)

const fs = require('node:fs');
const http = require('node:http');
const path = require('node:path');
const { WebSocketServer } = require('ws');
const { Server: SocketIOServer } = require('socket.io');

// PROTOCOLS are the subprotocols the backend speaks, in no particular order: the first one the
// client offers that is in this list wins, as a typical server picks.
const PROTOCOLS = ['chat', 'superchat', 'echo'];

function parseArgs(argv) {
  const args = { port: 0, host: '127.0.0.1', pingInterval: 25000 };
  for (let i = 0; i < argv.length; i++) {
    switch (argv[i]) {
      case '--port':
        args.port = Number(argv[++i]);
        break;
      case '--sio-ping-interval':
        args.pingInterval = Number(argv[++i]);
        break;
      case '--host':
        args.host = argv[++i];
        break;
      default:
        process.stderr.write(`server.js: unknown argument ${argv[i]}\n`);
        process.exit(2);
    }
  }
  if (!Number.isInteger(args.port) || args.port < 0 || args.port > 65535) {
    process.stderr.write('server.js: --port must be 0..65535\n');
    process.exit(2);
  }
  return args;
}

function intParam(url, name, def) {
  const v = url.searchParams.get(name);
  if (v === null || v === '') return def;
  const n = Number(v);
  return Number.isInteger(n) ? n : def;
}

// APP_FILES are the files of the small web app the browser test loads through the gate.
const APP_FILES = {
  '/app/index.html': [path.join(__dirname, 'app', 'index.html'), 'text/html; charset=utf-8'],
  '/app/socket.io.min.js': [path.join(__dirname, 'node_modules', 'socket.io-client', 'dist', 'socket.io.min.js'), 'text/javascript'],
};

// cors answers a cross-origin request for the app's own routes the way a typical app does:
// the requesting origin, with credentials. It reports whether it answered a preflight.
function cors(req, res) {
  const origin = req.headers.origin;
  if (origin) {
    res.setHeader('Access-Control-Allow-Origin', origin);
    res.setHeader('Access-Control-Allow-Credentials', 'true');
    res.setHeader('Vary', 'Origin');
  }
  if (req.method === 'OPTIONS' && req.headers['access-control-request-method']) {
    res.writeHead(204, {
      'Access-Control-Allow-Methods': 'GET, POST',
      'Access-Control-Allow-Headers': 'Authorization, Content-Type',
      'X-Backend': 'node',
    });
    res.end();
    return true;
  }
  return false;
}

function handleHTTP(req, res) {
  const url = new URL(req.url, 'http://backend');
  if (cors(req, res)) return;
  if (req.method === 'GET' && url.pathname === '/health') {
    res.writeHead(200, { 'Content-Type': 'text/plain', 'X-Backend': 'node' });
    res.end('ok');
    return;
  }
  if (req.method === 'POST' && url.pathname === '/login') {
    res.writeHead(200, { 'Content-Type': 'application/json', 'X-Backend': 'node' });
    res.end(JSON.stringify({ login: 'ok' }));
    return;
  }
  if (req.method === 'GET' && url.pathname === '/api/me') {
    res.writeHead(200, { 'Content-Type': 'application/json', 'X-Backend': 'node' });
    res.end(JSON.stringify({ subject: req.headers['x-auth-subject'] || null }));
    return;
  }
  if (req.method === 'GET' && APP_FILES[url.pathname]) {
    const [file, type] = APP_FILES[url.pathname];
    const body = fs.readFileSync(file);
    res.writeHead(200, { 'Content-Type': type, 'Content-Length': body.length, 'X-Backend': 'node' });
    res.end(body);
    return;
  }
  if (req.method === 'POST' && url.pathname === '/post') {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks);
      const headers = { 'X-Backend': 'node', 'Content-Length': body.length };
      if (req.headers['content-type']) headers['Content-Type'] = req.headers['content-type'];
      res.writeHead(200, headers);
      res.end(body);
    });
    return;
  }
  if (req.method === 'GET' && url.pathname === '/hello') {
    res.writeHead(200, { 'Content-Type': 'text/plain', 'X-Backend': 'node' });
    res.end('hello');
    return;
  }
  res.writeHead(404, { 'Content-Type': 'text/plain', 'X-Backend': 'node' });
  res.end('not found');
}

const echo = (ws) => {
  ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }));
};

// behaviours maps a path to what the backend does with a new WebSocket connection.
const behaviours = {
  '/echo': (ws) => echo(ws),

  '/close': (ws, req, url) => {
    const code = intParam(url, 'code', 1000);
    const reason = url.searchParams.get('reason') || '';
    ws.close(code, reason);
  },

  // send-on-open writes its messages in the same tick as the 101, so they usually share a TCP
  // segment with it: a gate that drops bytes buffered behind the handshake response loses them.
  '/send-on-open': (ws, req, url) => {
    const n = intParam(url, 'n', 1);
    for (let i = 0; i < n; i++) ws.send(`hello-${i}`);
    echo(ws);
  },

  '/headers': (ws, req) => {
    ws.send(JSON.stringify({ url: req.url, headers: req.headers, rawHeaders: req.rawHeaders }));
    echo(ws);
  },

  // die drops the TCP connection after the first message without a close frame.
  '/die': (ws) => {
    ws.once('message', () => ws.terminate());
  },

  '/fragments': (ws, req, url) => {
    const n = Math.max(1, intParam(url, 'n', 2));
    ws.on('message', (data, isBinary) => {
      const buf = Buffer.isBuffer(data) ? data : Buffer.concat(data);
      const size = Math.ceil(buf.length / n);
      for (let i = 0; i < n; i++) {
        const chunk = buf.subarray(Math.min(i * size, buf.length), Math.min((i + 1) * size, buf.length));
        ws.send(chunk, { binary: isBinary, fin: i === n - 1 });
      }
    });
  },
};

function main() {
  const args = parseArgs(process.argv.slice(2));
  const server = http.createServer(handleHTTP);

  const wss = new WebSocketServer({
    noServer: true,
    maxPayload: 64 << 20,
    handleProtocols: (offered) => {
      for (const p of offered) if (PROTOCOLS.includes(p)) return p;
      return false;
    },
  });
  wss.on('connection', (ws, req) => {
    const url = new URL(req.url, 'http://backend');
    ws.on('error', (err) => process.stderr.write(`ws error on ${url.pathname}: ${err.message}\n`));
    (behaviours[url.pathname] || echo)(ws, req, url);
  });

  server.on('upgrade', (req, socket, head) => {
    const url = new URL(req.url, 'http://backend');
    if (url.pathname.startsWith('/socket.io/')) return; // engine.io's own upgrade listener
    socket.on('error', () => {});
    if (url.pathname === '/forbidden') {
      const body = 'forbidden by backend';
      socket.end(
        'HTTP/1.1 403 Forbidden\r\n' +
          'Content-Type: text/plain\r\n' +
          `Content-Length: ${Buffer.byteLength(body)}\r\n` +
          'Connection: close\r\n' +
          'X-Backend: node\r\n' +
          '\r\n' +
          body,
      );
      return;
    }
    wss.handleUpgrade(req, socket, head, (ws) => wss.emit('connection', ws, req));
  });

  const io = new SocketIOServer(server, {
    transports: ['polling', 'websocket'],
    // Leave other paths' upgrades to the listener above instead of closing them after 1 s.
    destroyUpgrade: false,
    pingInterval: args.pingInterval,
    // Browsers load the app from another origin in the CORS test.
    cors: { origin: true, credentials: true },
  });
  // A chat app, on the main namespace and on /chat: "chat" and "typing" go to everyone in the
  // room, "whoami" answers the identity the gate sent, "subscribe" makes the room busy (the
  // server sends "chat" to this socket at rate per second for ms), "echo" acks its argument.
  const chat = (socket) => {
    socket.join('lobby');
    socket.on('echo', (arg, ack) => {
      if (typeof ack === 'function') ack(arg);
    });
    socket.on('chat', (msg, ack) => {
      socket.to('lobby').emit('chat', msg);
      if (typeof ack === 'function') ack('ok');
    });
    socket.on('typing', () => socket.to('lobby').emit('typing', socket.id));
    socket.on('whoami', (ack) => {
      if (typeof ack === 'function') ack({ subject: socket.handshake.headers['x-auth-subject'] || null });
    });
    socket.on('subscribe', ({ rate, ms }, ack) => {
      let n = 0;
      const timer = setInterval(() => socket.emit('chat', `busy-${n++}`), Math.max(1, Math.floor(1000 / rate)));
      setTimeout(() => {
        clearInterval(timer);
        socket.emit('done', n);
      }, ms);
      socket.on('disconnect', () => clearInterval(timer));
      if (typeof ack === 'function') ack('subscribed');
    });
  };
  io.on('connection', chat);
  io.of('/chat').on('connection', chat);

  server.listen(args.port, args.host, () => {
    process.stdout.write(`LISTENING ${server.address().port}\n`);
  });

  const stop = () => {
    io.close();
    wss.close();
    server.close();
    process.exit(0);
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

main();
