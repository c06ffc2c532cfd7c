//go:build e2e

package e2e

// frameRecorder is the conformance suite's backend: a raw TCP server that accepts the
// WebSocket upgrade by hand and records every frame the gate sends it, as it arrived on the
// wire (with its MASK and RSV bits, payload unmasked), so that a test can assert that nothing
// invalid got through. It behaves as a plain echo server:
//
//	text, binary, continuation  echoed frame by frame (same FIN and opcode, unmasked)
//	ping                        answered with a pong carrying the same payload
//	pong                        recorded only
//	close                       echoed with the same body, then the TCP connection is closed
//
// With ?bad=KIND on the request it misbehaves once: on the first data frame it receives it
// sends cfBadFrames(KIND) instead of the echo, then goes on recording (and echoing a close).
//
// Connections are identified by the request path: a test dials the gate with
// /cf/<id>, the gate forwards the path, and the test finds its recording with conn(id).

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

type frameRecorder struct {
	URL string // http://127.0.0.1:port, the gate's --upstream

	ln    net.Listener
	mu    sync.Mutex
	conns map[string]*recordedConn
	open  map[net.Conn]struct{}
	wg    sync.WaitGroup
}

// recordedConn is what one upstream connection received.
type recordedConn struct {
	id    string
	bad   string
	ready chan struct{} // closed when the upgrade was answered
	done  chan struct{} // closed when the TCP connection ended

	mu     sync.Mutex
	frames []cfFrame
	endErr error // why the read loop stopped (nil after the recorder closed it)
}

func newFrameRecorder(t testing.TB) *frameRecorder {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("recorder: %v", err)
	}
	r := &frameRecorder{URL: "http://" + ln.Addr().String(), ln: ln,
		conns: map[string]*recordedConn{}, open: map[net.Conn]struct{}{}}
	r.wg.Add(1)
	go r.accept()
	t.Cleanup(func() {
		ln.Close()
		r.mu.Lock()
		for c := range r.open {
			c.Close()
		}
		r.mu.Unlock()
		r.wg.Wait()
	})
	return r
}

func (r *frameRecorder) accept() {
	defer r.wg.Done()
	for {
		c, err := r.ln.Accept()
		if err != nil {
			return
		}
		r.mu.Lock()
		r.open[c] = struct{}{}
		r.mu.Unlock()
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			defer func() {
				r.mu.Lock()
				delete(r.open, c)
				r.mu.Unlock()
				c.Close()
			}()
			r.serve(c)
		}()
	}
}

// entry returns the recording for id, creating it when the test asks before the gate dialed.
func (r *frameRecorder) entry(id string) *recordedConn {
	r.mu.Lock()
	defer r.mu.Unlock()
	rc := r.conns[id]
	if rc == nil {
		rc = &recordedConn{id: id, ready: make(chan struct{}), done: make(chan struct{})}
		r.conns[id] = rc
	}
	return rc
}

// conn waits for the upstream connection of id and returns its recording.
func (r *frameRecorder) conn(t testing.TB, id string) *recordedConn {
	t.Helper()
	rc := r.entry(id)
	select {
	case <-rc.ready:
	case <-time.After(waitLimit):
		t.Fatalf("the recorder saw no upstream connection for %s within %v", id, waitLimit)
	}
	return rc
}

func (r *frameRecorder) serve(c net.Conn) {
	_ = c.SetReadDeadline(time.Now().Add(waitLimit))
	br := bufio.NewReader(c)
	req, err := http.ReadRequest(br)
	if err != nil {
		return
	}
	key := req.Header.Get("Sec-WebSocket-Key")
	if !strings.EqualFold(req.Header.Get("Upgrade"), "websocket") || key == "" {
		io.WriteString(c, "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
		return
	}
	id, _ := strings.CutPrefix(req.URL.Path, "/cf/")
	rc := r.entry(id)
	select {
	case <-rc.ready:
		// A second connection with the same id: a test bug; answer it but record nothing.
		io.WriteString(c, "HTTP/1.1 409 Conflict\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
		return
	default:
	}
	rc.bad = req.URL.Query().Get("bad")
	defer close(rc.done)
	_ = c.SetDeadline(time.Time{})
	if _, err := io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Accept: "+cfAccept(key)+"\r\n\r\n"); err != nil {
		close(rc.ready)
		rc.end(err)
		return
	}
	close(rc.ready)
	rc.run(c, br)
}

func (rc *recordedConn) end(err error) {
	rc.mu.Lock()
	rc.endErr = err
	rc.mu.Unlock()
}

func (rc *recordedConn) run(c net.Conn, br *bufio.Reader) {
	write := func(frames ...cfOut) error {
		for _, f := range frames {
			_ = c.SetWriteDeadline(time.Now().Add(waitLimit))
			if _, err := c.Write(f.encode()); err != nil {
				return err
			}
		}
		return nil
	}
	misbehaved, closeSent := false, false
	for {
		// Nothing the suite sends is larger than a few MiB; a larger announced length is
		// recorded by its header.
		f, err := cfReadFrame(br, 16<<20)
		if err != nil {
			if f.partial || f.length > 16<<20 {
				rc.record(f)
			}
			rc.end(err)
			return
		}
		rc.record(f)
		switch {
		case f.op <= cfOpBinary && rc.bad != "" && !misbehaved:
			misbehaved = true
			bad := cfBadFrames(rc.bad)
			closeSent = bad[len(bad)-1].op == cfOpClose
			if err := write(bad...); err != nil {
				rc.end(err)
				return
			}
		case f.op <= cfOpBinary:
			err = write(cfOut{fin: f.fin, op: f.op, payload: f.payload, noMask: true})
		case f.op == cfOpPing:
			err = write(cfOut{fin: true, op: cfOpPong, payload: f.payload, noMask: true})
		case f.op == cfOpClose:
			if closeSent {
				return // the close handshake this side started is complete
			}
			_ = write(cfOut{fin: true, op: cfOpClose, payload: f.payload, noMask: true})
			// The server closes the TCP connection first (RFC 6455 section 7.1.1).
			return
		}
		if err != nil {
			rc.end(err)
			return
		}
	}
}

func (rc *recordedConn) record(f cfFrame) {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	rc.frames = append(rc.frames, f)
}

// log returns the frames recorded so far.
func (rc *recordedConn) log() []cfFrame {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return append([]cfFrame(nil), rc.frames...)
}

// wait waits until the upstream connection ended and returns everything it received.
func (rc *recordedConn) wait(t testing.TB) []cfFrame {
	t.Helper()
	select {
	case <-rc.done:
	case <-time.After(waitLimit):
		t.Errorf("the gate did not end the upstream connection %s within %v; recorded so far:%s",
			rc.id, waitLimit, cfSummary(rc.log()))
	}
	return rc.log()
}

func (rc *recordedConn) report() string {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	s := fmt.Sprintf("backend %s recorded:%s", rc.id, cfSummary(rc.frames))
	if rc.endErr != nil {
		s += fmt.Sprintf("\n  backend read ended: %v", rc.endErr)
	}
	return s
}

// lastClose returns the code of the last frame when it is a close frame, else 0 (no close
// frame: the connection ended without one).
func cfLastClose(frames []cfFrame) int {
	if len(frames) == 0 || frames[len(frames)-1].op != cfOpClose || frames[len(frames)-1].partial {
		return 0
	}
	return frames[len(frames)-1].closeCode()
}

// cfBadFrames are the protocol violations the recorder sends for ?bad=KIND, as a server.
func cfBadFrames(kind string) []cfOut {
	srv := func(o cfOut) cfOut { return o.cfServer() }
	switch kind {
	case "masked":
		return []cfOut{cfMsg(cfOpText, "masked by the server")} // a server must not mask
	case "rsv":
		return []cfOut{srv(cfOut{fin: true, rsv: 4, op: cfOpText, payload: []byte("rsv1")})}
	case "rsv-ping":
		return []cfOut{srv(cfOut{fin: true, rsv: 2, op: cfOpPing, payload: []byte("rsv2")})}
	case "opcode":
		return []cfOut{srv(cfMsg(0x3, "reserved"))}
	case "utf8":
		return []cfOut{srv(cfMsg(cfOpText, "bad \xff\xfe utf-8"))}
	case "utf8-frag":
		// A valid first fragment, then a surrogate in the second.
		return []cfOut{srv(cfFrag(cfOpText, false, "ok-")), srv(cfFrag(cfOpCont, true, "\xed\xa0\x80"))}
	case "len62":
		// A 2^62-byte binary frame: header only, then a few bytes of it.
		return []cfOut{srv(cfOut{fin: true, op: cfOpBinary, payload: []byte("abcdef"), announce: 1 << 62, hasAnnounce: true})}
	case "len64msb":
		return []cfOut{srv(cfOut{fin: true, op: cfOpBinary, payload: []byte("abc"), announce: 1<<63 | 3, hasAnnounce: true})}
	case "ping-long":
		return []cfOut{srv(cfMsg(cfOpPing, strings.Repeat("p", 126)))}
	case "ping-frag":
		return []cfOut{srv(cfFrag(cfOpPing, false, "frag"))}
	case "cont":
		return []cfOut{srv(cfFrag(cfOpCont, true, "orphan"))}
	case "new-in-frag":
		return []cfOut{srv(cfFrag(cfOpText, false, "one-")), srv(cfMsg(cfOpText, "two"))}
	case "close-code":
		return []cfOut{srv(cfMsg(cfOpClose, cfCloseBody(1005, "")))}
	case "close-1byte":
		return []cfOut{srv(cfMsg(cfOpClose, "\x03"))}
	case "big-small-gate":
		// Over the 4 KiB gate's --max-message-bytes.
		return []cfOut{srv(cfMsg(cfOpBinary, strings.Repeat("b", 4097)))}
	}
	if code, ok := strings.CutPrefix(kind, "close-"); ok {
		// close-NNNN: a legitimate close with that code, initiated by the backend.
		var n int
		fmt.Sscanf(code, "%d", &n)
		return []cfOut{srv(cfMsg(cfOpClose, cfCloseBody(n, "backend says "+code)))}
	}
	panic("cfBadFrames: unknown kind " + kind)
}
