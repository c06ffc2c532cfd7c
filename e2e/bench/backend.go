package main

import (
	"bufio"
	"fmt"
	"net"
	"net/http"
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
func runBackend(addr string) error {
	var open atomic.Int64
	mux := http.NewServeMux()
	mux.HandleFunc("/count", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, open.Load())
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		conn, rw, _, err := ws.UpgradeHTTP(r, w)
		if err != nil {
			return
		}
		open.Add(1)
		defer open.Add(-1)
		defer conn.Close()
		echo(conn, rw.Reader)
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
