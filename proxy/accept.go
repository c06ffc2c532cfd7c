package proxy

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/net/http/httpguts"

	"github.com/holo/wsgate/internal/netpoll"
)

// headSize is the buffer a connection's first request head is read into.
// A head that does not fit (large cookies) goes to net/http, whose limit
// is the server's MaxHeaderBytes.
const headSize = 4096

// lingerFor bounds how long a refused handshake's connection is read and
// discarded after the answer, so that bytes the client sent after its
// request do not turn the close into a reset that could destroy the
// answer before the client read it (as net/http's own close does).
const lingerFor = 500 * time.Millisecond

var (
	headReaders = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, headSize) }}
	headCopies  = sync.Pool{New: func() any { b := make([]byte, 0, headSize); return &b }}
	// A 101 with a subprotocol and an extension fits.
	upgradeWriters = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, 512) }}
)

// Serve accepts connections on ln and serves them until ln is closed
// (srv.Shutdown and srv.Close close it). A connection whose first request
// is a WebSocket handshake is served here, on a socket the gate owns from
// accept on: no registration in the runtime's poller to undo, no
// duplicate to take at the upgrade, none of net/http's buffers left with
// a hijacked connection (through net/http a handshake made about seven
// more system calls and left 8 KiB more garbage). Any other connection goes to
// srv, with the bytes read so far, and srv serves it and the requests
// that follow on it, as srv.Serve(ln) would. So does a handshake this
// reader does not take whole: a head over headSize, a body, a header
// net/http would refuse; and every connection where there is no poller or
// ln is not a plain TCP listener (the PROXY protocol's). accepted, when
// set, sees each connection's peer as it is accepted.
//
// A handshake served here is served by the proxy itself: srv's Handler,
// ConnState, contexts and timeouts apply only to what srv serves (the
// proxy's HandshakeTimeout bounds the head, its MaxHeaderBytes the
// headers). A refusal is answered with Connection: close, where net/http
// would keep the connection for another request; a browser's WebSocket
// opens a new connection for each handshake anyway. Nothing reads the
// client's socket while its handshake is under way, so a client that
// leaves then is noticed when its 101 is written (net/http cancels the
// request at once); until then it holds its pending handshake's place,
// as a client that stays would, bounded by the dial and handshake
// timeouts.
func (p *Proxy) Serve(ln net.Listener, srv *http.Server, accepted func(net.Addr)) error {
	var own *netpoll.Listener
	if tl, ok := ln.(*net.TCPListener); ok {
		if pl := p.started(); pl != nil {
			// The client's keepalive as net.ListenConfig's: off when the
			// gate's pings find dead clients, else Go's default.
			keepAlive := 15 * time.Second
			if p.cfg.PingInterval > 0 {
				keepAlive = 0
			}
			var err error
			if own, err = pl.Listen(tl, keepAlive); err != nil {
				p.log.Warn("serving every connection through net/http: the poller cannot take the listener", "err", err.Error())
			}
		}
	}
	if own == nil {
		if accepted != nil {
			ln = &watchedListener{Listener: ln, accepted: accepted}
		}
		return srv.Serve(ln)
	}
	rest := &handedListener{own: own, conns: make(chan net.Conn), done: make(chan struct{})}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(rest) }()
	idle := make(chan *netpoll.Conn) // to a handshaker waiting for its next connection
	var backoff time.Duration
	for {
		c, err := own.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				// srv's Shutdown or Close, or the proxy's (its poller).
				// rest.done also ends the idle handshakers.
				rest.Close()
				if err := <-served; !errors.Is(err, net.ErrClosed) {
					return err
				}
				return http.ErrServerClosed
			}
			// Out of descriptors, as net/http's own loop: wait, then try again.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			p.log.Warn("accept failed; retrying", "err", err.Error(), "retry_in_ms", backoff.Milliseconds())
			time.Sleep(backoff)
			continue
		}
		backoff = 0
		if accepted != nil {
			accepted(c.RemoteAddr())
		}
		select {
		case idle <- c:
		default:
			go p.handshaker(c, idle, rest)
		}
	}
}

// handshakerLinger is how long a handshaker waits for another connection
// before it ends.
const handshakerLinger = 2 * time.Second

// handshaker serves c, then the connections Serve gives it while it
// waits, until none came for handshakerLinger or Serve ended. A
// handshake grows its goroutine's stack to 32 KiB (JWT verification, the
// upstream's dial): a new goroutine for each grew a new stack each time,
// a twentieth of a handshake's CPU.
func (p *Proxy) handshaker(c *netpoll.Conn, idle <-chan *netpoll.Conn, rest *handedListener) {
	t := time.NewTimer(handshakerLinger)
	defer t.Stop()
	for {
		p.serveConn(c, rest)
		t.Reset(handshakerLinger)
		select {
		case c = <-idle:
		case <-t.C:
			return
		case <-rest.done:
			return
		}
	}
}

// serveConn reads c's first request head; a WebSocket handshake it
// serves, anything else it hands to net/http through rest.
func (p *Proxy) serveConn(c *netpoll.Conn, rest *handedListener) {
	defer func() {
		// As net/http: a handler's panic ends its connection, not the
		// process (Close does nothing once the relay has the socket).
		if v := recover(); v != nil {
			if v != http.ErrAbortHandler {
				buf := make([]byte, 64<<10)
				p.log.Error("panic serving a handshake", "peer", c.RemoteAddr().String(), "panic", fmt.Sprint(v),
					"stack", string(buf[:runtime.Stack(buf, false)]))
			}
			_ = c.Close()
		}
	}()
	headBy := time.Now().Add(p.cfg.HandshakeTimeout)
	_ = c.SetReadDeadline(headBy)
	br := headReaders.Get().(*bufio.Reader)
	br.Reset(c)
	defer func() {
		br.Reset(nil)
		headReaders.Put(br)
	}()
	n, err := readHead(br)
	if err != nil && err != bufio.ErrBufferFull {
		// Gone, or silent until the timeout: net/http answers neither.
		_ = c.Close()
		return
	}
	headp := headCopies.Get().(*[]byte)
	*headp = (*headp)[:0]
	var r *http.Request
	if err == nil {
		head, _ := br.Peek(n)
		*headp = append(*headp, head...) // what net/http must read if it gets c
		r, err = http.ReadRequest(br)
	}
	if err != nil || !ownsRequest(r) {
		if hook := p.hooks.handed; hook != nil {
			hook()
		}
		// The head as it came, then what came after it.
		rest.hand(c, append(*headp, peekBuffered(br)...), headBy)
		return
	}
	headCopies.Put(headp)
	r.RemoteAddr = c.RemoteAddr().String()
	w := &upgradeWriter{c: c, br: br}
	if p.checkRequest(w, r) {
		p.serveWebSocket(w, r)
	}
	if w.bw != nil {
		w.bw.Reset(nil)
		upgradeWriters.Put(w.bw)
	}
	if !w.hijacked {
		w.answer(p.cfg.HandshakeTimeout)
	}
}

// readHead reads until br holds a request head (up to and including the
// empty line that ends it) and returns its length; bufio.ErrBufferFull
// when it does not fit.
func readHead(br *bufio.Reader) (int, error) {
	from := 0
	for {
		b := peekBuffered(br)
		for i := from; i < len(b); i++ {
			if b[i] != '\n' {
				continue
			}
			// An empty line: LF, or CR LF, right after a line's LF.
			if i+1 < len(b) && b[i+1] == '\n' {
				return i + 2, nil
			}
			if i+2 < len(b) && b[i+1] == '\r' && b[i+2] == '\n' {
				return i + 3, nil
			}
		}
		if len(b) == br.Size() {
			return 0, bufio.ErrBufferFull
		}
		from = max(len(b)-2, 0)
		if _, err := br.Peek(len(b) + 1); err != nil {
			return 0, err
		}
	}
}

func peekBuffered(br *bufio.Reader) []byte {
	b, _ := br.Peek(br.Buffered())
	return b
}

// ownsRequest reports whether Serve serves r itself: a WebSocket
// handshake without a body, with the valid Host and header fields
// net/http requires of a request it serves.
func ownsRequest(r *http.Request) bool {
	if !isWebSocket(r) || r.Method != http.MethodGet || r.ProtoMajor != 1 || r.ProtoMinor != 1 ||
		r.ContentLength != 0 || len(r.TransferEncoding) != 0 || len(r.Header["Expect"]) != 0 {
		return false
	}
	// In origin form, r.Host is the Host header (http.ReadRequest moved it
	// there); net/http answers a missing or malformed one, and any other
	// form, as it does.
	if !strings.HasPrefix(r.RequestURI, "/") || r.Host == "" || !httpguts.ValidHostHeader(r.Host) {
		return false
	}
	for k, vs := range r.Header {
		if !httpguts.ValidHeaderFieldName(k) {
			return false
		}
		for _, v := range vs {
			if !httpguts.ValidHeaderFieldValue(v) {
				return false
			}
		}
	}
	return true
}

// upgradeWriter is the http.ResponseWriter of a handshake Serve serves.
// Hijack hands the connection over as net/http's does, with the reader
// that holds what the client sent after its handshake and a writer for
// the 101; an answer without one is kept whole and written by answer.
type upgradeWriter struct {
	c        *netpoll.Conn
	br       *bufio.Reader
	bw       *bufio.Writer
	header   http.Header
	status   int
	body     []byte
	hijacked bool
}

func (w *upgradeWriter) Header() http.Header {
	if w.header == nil {
		w.header = make(http.Header)
	}
	return w.header
}

func (w *upgradeWriter) WriteHeader(code int) {
	if w.status == 0 && !w.hijacked && code >= 200 {
		w.status = code
	}
}

func (w *upgradeWriter) Write(b []byte) (int, error) {
	if w.hijacked {
		return 0, http.ErrHijacked
	}
	w.WriteHeader(http.StatusOK)
	w.body = append(w.body, b...)
	return len(b), nil
}

func (w *upgradeWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	if w.hijacked {
		return nil, nil, http.ErrHijacked
	}
	if w.status != 0 {
		return nil, nil, errors.New("proxy: hijack after the answer began")
	}
	w.hijacked = true
	w.bw = upgradeWriters.Get().(*bufio.Writer)
	w.bw.Reset(w.c)
	return w.c, bufio.NewReadWriter(w.br, w.bw), nil
}

// answer writes the answer the handler left, then closes the connection
// the way net/http closes one it will not read again: the sending half
// first, then what the client still sends is read and dropped, briefly.
func (w *upgradeWriter) answer(timeout time.Duration) {
	defer w.c.Close()
	status := w.status
	if status == 0 {
		status = http.StatusOK
	}
	h := w.Header()
	for _, k := range [...]string{"Content-Length", "Transfer-Encoding", "Connection"} {
		delete(h, k)
	}
	body := w.body
	if !bodyAllowed(status) {
		body = nil
	} else if len(body) > 0 && h.Get("Content-Type") == "" {
		h.Set("Content-Type", http.DetectContentType(body))
	}
	if h.Get("Date") == "" {
		h.Set("Date", time.Now().UTC().Format(http.TimeFormat))
	}
	out := make([]byte, 0, 256+len(body))
	out = append(out, "HTTP/1.1 "...)
	out = strconv.AppendInt(out, int64(status), 10)
	out = append(out, ' ')
	out = append(out, http.StatusText(status)...)
	out = append(out, "\r\n"...)
	hb := headerBytes{out}
	_ = h.Write(&hb)
	out = hb.b
	if bodyAllowed(status) {
		out = append(out, "Content-Length: "...)
		out = strconv.AppendInt(out, int64(len(body)), 10)
		out = append(out, "\r\n"...)
	}
	out = append(out, "Connection: close\r\n\r\n"...)
	out = append(out, body...)
	_ = w.c.SetWriteDeadline(time.Now().Add(timeout))
	if _, err := w.c.Write(out); err != nil {
		return
	}
	if w.c.CloseWrite() != nil {
		return
	}
	_ = w.c.SetReadDeadline(time.Now().Add(lingerFor))
	var sink [512]byte
	for range 64 { // at most 32 KiB
		if _, err := w.c.Read(sink[:]); err != nil {
			return
		}
	}
}

// bodyAllowed reports whether a response with status has a body (RFC
// 9110 section 6.4.1).
func bodyAllowed(status int) bool {
	return status >= 200 && status != http.StatusNoContent && status != http.StatusNotModified
}

// headerBytes appends what http.Header.Write writes.
type headerBytes struct{ b []byte }

func (h *headerBytes) Write(p []byte) (int, error) {
	h.b = append(h.b, p...)
	return len(p), nil
}

func (h *headerBytes) WriteString(s string) (int, error) {
	h.b = append(h.b, s...)
	return len(s), nil
}

// handedListener is the listener net/http serves in Serve: it accepts the
// connections Serve hands it, and closing it closes the gate's.
type handedListener struct {
	own   *netpoll.Listener
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once
}

func (l *handedListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *handedListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return l.own.Close()
}

func (l *handedListener) Addr() net.Addr { return l.own.Addr() }

// hand gives c to net/http, which first reads read, the bytes already
// taken from c, and must have the first request's head by headBy.
func (l *handedListener) hand(c *netpoll.Conn, read []byte, headBy time.Time) {
	nc, err := c.Release()
	if err != nil {
		_ = c.Close()
		return
	}
	var rc net.Conn = nc
	if tc, ok := nc.(*net.TCPConn); ok {
		// The head is due when it was; a net/http without a header timeout
		// clears the deadline once it has the head.
		_ = tc.SetReadDeadline(headBy)
		rc = &replayConn{TCPConn: tc, read: read, headBy: headBy}
	}
	select {
	case l.conns <- rc:
	case <-l.done:
		_ = nc.Close()
	}
}

// replayConn is a connection whose first bytes were read already: Read
// returns them first. Its descriptor (SyscallConn, for the relay to take
// it at an upgrade) is there only once they have been read: taken
// earlier, they would be lost.
type replayConn struct {
	*net.TCPConn
	read []byte
	// headBy is when the first head is due, for net/http's first read
	// deadline (its header timeout, started again at the hand-over).
	headBy time.Time
}

// SetReadDeadline is TCPConn's, except that a first deadline that is not
// zero, net/http's header timeout for the first request, is no later
// than headBy: a slow head handed over gets the header timeout once, not
// twice. (Without a header timeout, net/http's first call comes after the
// head, and clears the deadline.)
func (c *replayConn) SetReadDeadline(t time.Time) error {
	if by := c.headBy; !by.IsZero() {
		c.headBy = time.Time{}
		if !t.IsZero() && t.After(by) {
			t = by
		}
	}
	return c.TCPConn.SetReadDeadline(t)
}

func (c *replayConn) Read(b []byte) (int, error) {
	if len(c.read) > 0 {
		n := copy(b, c.read)
		c.replayed(n)
		return n, nil
	}
	return c.TCPConn.Read(b)
}

// replayed drops the first n bytes read ahead; the buffer is not kept for
// the connection's life once they are all replayed.
func (c *replayConn) replayed(n int) {
	if c.read = c.read[n:]; len(c.read) == 0 {
		c.read = nil
	}
}

// WriteTo is TCPConn's, after the bytes read ahead (TCPConn's own would
// skip them).
func (c *replayConn) WriteTo(w io.Writer) (int64, error) {
	var done int64
	if len(c.read) > 0 {
		n, err := w.Write(c.read)
		c.replayed(n)
		done = int64(n)
		if err != nil {
			return done, err
		}
	}
	n, err := c.TCPConn.WriteTo(w)
	return done + n, err
}

func (c *replayConn) SyscallConn() (syscall.RawConn, error) {
	if len(c.read) > 0 {
		return nil, errors.New("proxy: bytes read ahead of the connection")
	}
	return c.TCPConn.SyscallConn()
}

// watchedListener shows each accepted connection's peer to accepted.
type watchedListener struct {
	net.Listener
	accepted func(net.Addr)
}

func (l *watchedListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.accepted(c.RemoteAddr())
	}
	return c, err
}
