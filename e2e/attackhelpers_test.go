//go:build e2e

package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha1"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// atkNoLimits turns off the per-identity and per-IP rules: every attack test connects from
// 127.0.0.1 and is about something else than rate limits.
var atkNoLimits = []string{"--user-rate", "0", "--ip-rate", "0", "--user-conn-rate", "0", "--ip-conn-rate", "0"}

// atkGate starts a gate in front of upstream with the rate limits off and args.
func atkGate(t *testing.T, upstream string, args ...string) *Gate {
	t.Helper()
	return startGate(t, append(append(append([]string{}, atkNoLimits...), "--upstream", upstream), args...)...)
}

// atkHostPort is the host:port of g's client listener.
func atkHostPort(g *Gate) string { return strings.TrimPrefix(g.URL, "ws://") }

// atkBackend is the upstream of the attack tests: a coder/websocket server that counts every
// request it gets and can misbehave on purpose. Paths:
//
//	/stream?size=N     sends binary frames of N bytes as fast as the gate takes them, forever
//	/hang              takes the upgrade request and never answers it
//	/reset             answers 101, sends tick-0 … tick-2, waits for one client frame, then resets
//	                   the TCP connection (RST) between frames
//	/reset-mid-frame?len=N&sent=M
//	                   answers 101, sends tick-0, waits for one client frame, then sends the
//	                   header and first M payload bytes of an N-byte binary frame and resets
//	anything else      echoes every message with its type
//
// refuse closes its listener, so new connections are refused while established ones live on.
type atkBackend struct {
	URL string // http://127.0.0.1:port

	requests atomic.Int64 // every HTTP request that reached the backend
	streamed atomic.Int64 // bytes of frames /stream handed to the kernel

	// streamCloseAt is when /stream last received a close frame (unix nanoseconds).
	streamCloseAt atomic.Int64

	// closes receives, per ended /echo or /stream connection, the close frame the backend got
	// from the gate, or a CloseError with Code -1 when the connection ended without one.
	closes closeLog

	ln       net.Listener
	srv      *http.Server
	ctx      context.Context
	handlers sync.WaitGroup
	mu       sync.Mutex
	raw      []net.Conn // hijacked by /hang and /reset*, closed in cleanup
}

func newAtkBackend(t *testing.T) *atkBackend {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	b := &atkBackend{
		URL:    "http://" + ln.Addr().String(),
		closes: newCloseLog(),
		ln:     ln,
		ctx:    ctx,
	}
	b.srv = &http.Server{Handler: http.HandlerFunc(b.serve), ReadHeaderTimeout: waitLimit}
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = b.srv.Serve(ln)
	}()
	t.Cleanup(func() {
		cancel()
		_ = b.srv.Close()
		<-served
		b.mu.Lock()
		for _, c := range b.raw {
			_ = c.Close()
		}
		b.mu.Unlock()
		done := make(chan struct{})
		go func() { b.handlers.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(waitLimit):
			t.Errorf("attack backend handlers did not return within %v", waitLimit)
		}
	})
	return b
}

// refuse closes the listener: connections already established keep working, new ones are
// refused by the kernel.
func (b *atkBackend) refuse() { _ = b.ln.Close() }

func (b *atkBackend) serve(w http.ResponseWriter, r *http.Request) {
	b.handlers.Add(1)
	defer b.handlers.Done()
	b.requests.Add(1)
	switch r.URL.Path {
	case "/hang":
		nc := b.hijack(w)
		if nc == nil {
			return
		}
		// Until the gate gives up on the handshake and closes, or the test ends.
		_, _ = io.Copy(io.Discard, nc)
		return
	case "/reset", "/reset-mid-frame":
		b.serveReset(w, r)
		return
	}
	if r.URL.Path == "/stream" {
		b.serveStream(w, r)
		return
	}
	c, err := websocket.Accept(w, r, &websocket.AcceptOptions{InsecureSkipVerify: true})
	if err != nil {
		return
	}
	defer c.CloseNow()
	c.SetReadLimit(64 << 20)
	for {
		typ, p, err := c.Read(b.ctx)
		if err != nil {
			b.recordClose(err)
			return
		}
		if err := c.Write(b.ctx, typ, p); err != nil {
			b.recordClose(err)
			return
		}
	}
}

// serveStream answers the upgrade by hand and writes size-byte binary frames until a write
// fails, counting what the kernel took in streamed; a reader records the close frame the gate
// sends meanwhile, and when, in streamCloseAt. Raw frames, not coder/websocket: its reader would
// wait for the blocked writer before reporting the close.
func (b *atkBackend) serveStream(w http.ResponseWriter, r *http.Request) {
	size, _ := strconv.Atoi(r.URL.Query().Get("size"))
	if size <= 0 {
		size = 64 << 10
	}
	accept := atkAcceptKey(r.Header.Get("Sec-WebSocket-Key"))
	nc := b.hijack(w)
	if nc == nil {
		return
	}
	defer nc.Close()
	if _, err := fmt.Fprintf(nc, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n", accept); err != nil {
		return
	}
	read := make(chan struct{})
	go func() {
		defer close(read)
		rc := &rawConn{Conn: nc, br: bufio.NewReader(nc)}
		for {
			f, err := rc.readFrame()
			if err != nil {
				b.recordClose(err)
				_ = nc.Close()
				return
			}
			if f.opcode == 0x8 {
				b.streamCloseAt.Store(time.Now().UnixNano())
				ce := websocket.CloseError{Code: websocket.StatusNoStatusRcvd}
				if len(f.payload) >= 2 {
					ce = websocket.CloseError{Code: websocket.StatusCode(int(f.payload[0])<<8 | int(f.payload[1])), Reason: string(f.payload[2:])}
				}
				b.recordClose(ce)
				return
			}
		}
	}()
	msg := encodeRawFrame(0x82, false, bytes.Repeat([]byte{'s'}, size))
	for b.ctx.Err() == nil {
		n, err := nc.Write(msg)
		b.streamed.Add(int64(n))
		if err != nil {
			break
		}
	}
	_ = nc.Close()
	<-read
}

// serveReset answers the upgrade by hand (coder/websocket hides the TCP connection) and then
// resets the connection as described on atkBackend.
func (b *atkBackend) serveReset(w http.ResponseWriter, r *http.Request) {
	accept := atkAcceptKey(r.Header.Get("Sec-WebSocket-Key"))
	nc := b.hijack(w)
	if nc == nil {
		return
	}
	_ = nc.SetDeadline(time.Now().Add(waitLimit))
	var out bytes.Buffer
	fmt.Fprintf(&out, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n", accept)
	ticks := 3
	if r.URL.Path == "/reset-mid-frame" {
		ticks = 1
	}
	for i := range ticks {
		out.Write(encodeRawFrame(0x81, false, []byte("tick-"+strconv.Itoa(i))))
	}
	if _, err := nc.Write(out.Bytes()); err != nil {
		return
	}
	// One frame from the gate (the client's "go") proves the ticks went through before the reset.
	var hdr [2]byte
	if _, err := io.ReadFull(nc, hdr[:]); err != nil {
		return
	}
	if r.URL.Path == "/reset-mid-frame" {
		length, _ := strconv.Atoi(r.URL.Query().Get("len"))
		sent, _ := strconv.Atoi(r.URL.Query().Get("sent"))
		whole := encodeRawFrame(0x82, false, bytes.Repeat([]byte{'m'}, length))
		partial := whole[:len(whole)-length+sent]
		if _, err := nc.Write(partial); err != nil {
			return
		}
		// Let the gate read (and forward) the partial frame before the reset destroys it.
		time.Sleep(200 * time.Millisecond)
	}
	if tc, ok := nc.(*net.TCPConn); ok {
		_ = tc.SetLinger(0) // RST instead of FIN
	}
	_ = nc.Close()
}

func (b *atkBackend) hijack(w http.ResponseWriter) net.Conn {
	nc, _, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return nil
	}
	b.mu.Lock()
	b.raw = append(b.raw, nc)
	b.mu.Unlock()
	return nc
}

func (b *atkBackend) recordClose(err error) { b.closes.record(err) }

// nextClose returns the next close the backend recorded, waiting at most waitLimit.
func (b *atkBackend) nextClose(t testing.TB) websocket.CloseError {
	t.Helper()
	return b.closes.next(t, "the attack backend")
}

// atkAcceptKey is Sec-WebSocket-Accept for key (RFC 6455 section 4.2.2).
func atkAcceptKey(key string) string {
	h := sha1.Sum([]byte(key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"))
	return base64.StdEncoding.EncodeToString(h[:])
}

// atkEcho sends msg on c and fails unless the same text comes back.
func atkEcho(t testing.TB, c *websocket.Conn, msg string) {
	t.Helper()
	if err := atkTryEcho(c, msg); err != nil {
		t.Fatalf("echo %q: %v", msg, err)
	}
}

func atkTryEcho(c *websocket.Conn, msg string) error {
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	if err := c.Write(ctx, websocket.MessageText, []byte(msg)); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	typ, p, err := c.Read(ctx)
	if err != nil {
		return fmt.Errorf("read: %w", err)
	}
	if typ != websocket.MessageText || string(p) != msg {
		return fmt.Errorf("got %v %q", typ, tail(string(p), 64))
	}
	return nil
}

// atkHealthy fails unless the gate process is still running, the established neighbour (when
// not nil) echoes, and, when fresh, a new connection through the gate echoes too.
func atkHealthy(t *testing.T, g *Gate, neighbour *websocket.Conn, what string, fresh bool) {
	t.Helper()
	if g.proc.exited() {
		t.Fatalf("after %s the gate exited: %v", what, g.Cmd.ProcessState)
	}
	if neighbour != nil {
		atkEcho(t, neighbour, "neighbour after "+what)
	}
	if !fresh {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	c, resp, err := websocket.Dial(ctx, g.URL+"/echo", nil)
	if err != nil {
		status := 0
		if resp != nil {
			status = resp.StatusCode
		}
		t.Fatalf("after %s a new connection failed: status %d: %v", what, status, err)
	}
	defer c.CloseNow()
	atkEcho(t, c, "fresh after "+what)
	_ = c.Close(websocket.StatusNormalClosure, "")
}

// atkEchoLoop echoes on c until stop is closed and returns how many echoes succeeded and the
// first error; echoed counts the successes as they happen. It paces itself a little so it
// competes with the attack without starving it.
func atkEchoLoop(c *websocket.Conn, stop <-chan struct{}, echoed *atomic.Int64) (ok int, err error) {
	for i := 0; ; i++ {
		select {
		case <-stop:
			return ok, nil
		default:
		}
		if err := atkTryEcho(c, "neighbour-"+strconv.Itoa(i)); err != nil {
			return ok, err
		}
		ok++
		echoed.Add(1)
		time.Sleep(5 * time.Millisecond)
	}
}

// atkRSS returns the resident set size of process pid in KiB, from /proc/<pid>/status.
func atkRSS(t testing.TB, pid int) int64 {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		t.Skipf("no /proc status for the gate: %v", err)
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			f := strings.Fields(rest)
			if len(f) > 0 {
				if n, err := strconv.ParseInt(f[0], 10, 64); err == nil {
					return n
				}
			}
		}
	}
	t.Fatalf("no VmRSS in /proc/%d/status", pid)
	return 0
}

// atkRSSWatch samples the gate's RSS every 50 ms until the returned function is called, which
// returns the highest sample in KiB.
func atkRSSWatch(t testing.TB, g *Gate) (stop func() int64) {
	t.Helper()
	pid := g.Cmd.Process.Pid
	var peak atomic.Int64
	peak.Store(atkRSS(t, pid))
	quit := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		tk := time.NewTicker(50 * time.Millisecond)
		defer tk.Stop()
		for {
			select {
			case <-quit:
				return
			case <-tk.C:
			}
			b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
			if err != nil {
				continue
			}
			for _, line := range strings.Split(string(b), "\n") {
				if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
					if f := strings.Fields(rest); len(f) > 0 {
						if n, err := strconv.ParseInt(f[0], 10, 64); err == nil && n > peak.Load() {
							peak.Store(n)
						}
					}
				}
			}
		}
	}()
	var once sync.Once
	stop = func() int64 {
		once.Do(func() { close(quit); <-done })
		return peak.Load()
	}
	t.Cleanup(func() { stop() })
	return stop
}

// atkWaitFor polls cond every 20 ms until it holds or limit passes.
func atkWaitFor(t testing.TB, limit time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", limit, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// atkRawRequest writes req to the gate while reading its answer, so a gate that answers and
// closes before the whole request went out is still heard, and returns the response status and
// body (status 0 when the connection ended without a response).
func atkRawRequest(t testing.TB, hostport string, req []byte) (status int, body string, err error) {
	t.Helper()
	nc, err := net.DialTimeout("tcp", hostport, waitLimit)
	if err != nil {
		t.Fatalf("dial %s: %v", hostport, err)
	}
	defer nc.Close()
	_ = nc.SetDeadline(time.Now().Add(waitLimit))
	wrote := make(chan struct{})
	go func() {
		defer close(wrote)
		_, _ = nc.Write(req) // fails once the gate closed; the answer says why
	}()
	defer func() { nc.Close(); <-wrote }()
	resp, err := http.ReadResponse(bufio.NewReader(nc), nil)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
	return resp.StatusCode, string(b), nil
}

// atkUpgradeRequest is a WebSocket upgrade request for path with extra header lines.
func atkUpgradeRequest(hostport, path string, extra ...string) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n", path, hostport)
	fmt.Fprintf(&b, "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n", rawClientKey)
	for _, l := range extra {
		b.WriteString(l)
		b.WriteString("\r\n")
	}
	b.WriteString("\r\n")
	return b.Bytes()
}
