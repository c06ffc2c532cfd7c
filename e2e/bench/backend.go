package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gobwas/ws"
)

// runBackend serves the echo backend on addr until the process is killed. It runs as its own
// process (the harness re-executes itself with -backend) so that its 9,000 upstream sockets
// count against its own open-files limit, not the load generator's.
//
// Every WebSocket frame is echoed with the same opcode and FIN bit, unmasked (RFC 6455
// section 5.1); a close is answered with a close. GET /count answers the number of open
// WebSockets, which tells the harness when 9,000 idle connections have reached the backend.
//
// A WebSocket opened with ?conn=ID is tracked for the rolling-restart scenario: its replies
// come late (?delay=D after the message) and are counted, and GET /replies?prefix=P answers
// "ID written late last done" for every tracked connection whose ID starts with P, forgetting
// the ones that have ended.
func runBackend(addr string) error {
	var open atomic.Int64
	tr := &trackers{m: map[string]*tracked{}}
	mux := http.NewServeMux()
	mux.HandleFunc("/count", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, open.Load())
	})
	mux.HandleFunc("/replies", func(w http.ResponseWriter, r *http.Request) {
		tr.report(w, r.URL.Query().Get("prefix"))
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		id := r.URL.Query().Get("conn")
		delay, _ := time.ParseDuration(r.URL.Query().Get("delay"))
		conn, rw, _, err := ws.UpgradeHTTP(r, w)
		if err != nil {
			return
		}
		open.Add(1)
		defer open.Add(-1)
		defer conn.Close()
		if id == "" {
			echo(conn, rw.Reader)
			return
		}
		t := tr.add(id)
		defer t.done.Store(true)
		echoLate(conn, rw.Reader, t, delay)
	})
	srv := &http.Server{Addr: addr, Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	return srv.ListenAndServe()
}

// echo answers frames until the peer closes or breaks the protocol, one write per frame as
// WebSocket servers do.
func echo(conn net.Conn, br *bufio.Reader) {
	var buf []byte
	out := make([]byte, 0, 512)
	for {
		f, err := readFrame(br, &buf)
		if err != nil {
			return
		}
		switch f.op() {
		case opClose:
			code := f.payload
			if len(code) > 2 {
				code = code[:2]
			}
			out = appendHeader(out, finBit|opClose, len(code), false)
			out = append(out, code...)
			_, _ = conn.Write(out)
			return
		case opPing:
			out = appendHeader(out, finBit|opPong, len(f.payload), false)
		case opPong:
			continue
		default:
			out = appendHeader(out, f.b0, len(f.payload), false)
		}
		out = append(out, f.payload...)
		if _, err := conn.Write(out); err != nil {
			return
		}
		out = out[:0]
	}
}

// backendCount asks the backend how many WebSockets it holds.
func backendCount(addr string) (int, error) {
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get("http://" + addr + "/count")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	var n int
	if _, err := fmt.Fscan(resp.Body, &n); err != nil {
		return 0, fmt.Errorf("backend /count: %w", err)
	}
	return n, nil
}

// trackers holds the backend's tracked connections by ID.
type trackers struct {
	mu sync.Mutex
	m  map[string]*tracked
}

// tracked counts what the backend wrote on one tracked connection.
type tracked struct {
	written atomic.Int64 // replies written
	late    atomic.Int64 // of which written after the peer's close (or the end of its stream)
	last    atomic.Int64 // sequence number of the last reply written
	done    atomic.Bool  // the connection has ended: the counts are final
}

func (ts *trackers) add(id string) *tracked {
	t := &tracked{}
	ts.mu.Lock()
	ts.m[id] = t
	ts.mu.Unlock()
	return t
}

// report writes one line per tracked connection whose ID starts with prefix and forgets the
// ended ones.
func (ts *trackers) report(w io.Writer, prefix string) {
	ts.mu.Lock()
	var lines []string
	for id, t := range ts.m {
		if !strings.HasPrefix(id, prefix) {
			continue
		}
		done := t.done.Load() // read first: the counts read after it are final when it is true
		lines = append(lines, fmt.Sprintf("%s %d %d %d %t", id, t.written.Load(), t.late.Load(), t.last.Load(), done))
		if done {
			delete(ts.m, id)
		}
	}
	ts.mu.Unlock()
	slices.Sort(lines)
	for _, l := range lines {
		fmt.Fprintln(w, l)
	}
}

// echoLate answers a tracked connection: each data frame, whose payload is its decimal
// sequence number, is echoed delay after it arrived by a writer goroutine; when the peer's close
// arrives, the replies still due are written at once and then the close, as a backend that
// finishes its work before it closes. Replies a proxy holds back or drops once it has sent its
// close would show as written here and missing at the client.
func echoLate(conn net.Conn, br *bufio.Reader, t *tracked, delay time.Duration) {
	type reply struct {
		frame []byte
		seq   int64 // -1 for a pong
		due   time.Time
	}
	q := make(chan reply, 256)
	closing := make(chan struct{}) // closed once the peer's close has been read
	writerDone := make(chan struct{})
	go func() { // lateWriter
		defer close(writerDone)
		broken := false
		for r := range q {
			if broken {
				continue // keep taking, so that the reader never blocks on q
			}
			late := false
			if wait := time.Until(r.due); wait > 0 {
				tm := time.NewTimer(wait)
				select {
				case <-tm.C:
				case <-closing:
					tm.Stop()
				}
			}
			select {
			case <-closing:
				late = true
			default:
			}
			if _, err := conn.Write(r.frame); err != nil {
				broken = true
				continue
			}
			if r.seq >= 0 {
				t.written.Add(1)
				t.last.Store(r.seq)
				if late {
					t.late.Add(1)
				}
			}
		}
	}()
	var buf []byte
	var closeFrame []byte
read:
	for {
		f, err := readFrame(br, &buf)
		if err != nil {
			break
		}
		switch f.op() {
		case opClose:
			code := f.payload[:min(len(f.payload), 2)]
			closeFrame = append(appendHeader(nil, finBit|opClose, len(code), false), code...)
			break read
		case opPing:
			q <- reply{frame: append(appendHeader(nil, finBit|opPong, len(f.payload), false), f.payload...), seq: -1}
		case opPong:
		default:
			q <- reply{frame: append(appendHeader(nil, f.b0, len(f.payload), false), f.payload...),
				seq: parseSeq(f.payload), due: time.Now().Add(delay)}
		}
	}
	close(closing)
	close(q)
	<-writerDone
	if closeFrame != nil {
		_, _ = conn.Write(closeFrame)
	}
}

// parseSeq reads a decimal sequence number; 0 when p is not one.
func parseSeq(p []byte) int64 {
	var n int64
	for _, c := range p {
		if c < '0' || c > '9' {
			return 0
		}
		n = n*10 + int64(c-'0')
	}
	return n
}
