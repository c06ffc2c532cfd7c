//go:build e2e

// Package e2e runs the real wsgate binary between real clients (coder/websocket, the Node `ws`
// client, socket.io-client) and real, unmodified backends (a Node `ws` + socket.io server and a Go
// coder/websocket server), and asserts what the README's "What clients see" table promises.
//
// Run it with `go test -tags e2e -race -count=1 ./e2e/` after `npm ci --prefix e2e/backend`.
// Under -race the gate binary is built with -race too, and a test fails when the gate reports a
// data race. WSGATE_E2E_BIN=/path/to/wsgate runs the suite against that binary instead.
package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
	"go.uber.org/goleak"
)

// waitLimit bounds every wait loop of the harness: process start, readiness, metric polling.
const waitLimit = 10 * time.Second

var (
	// gateBin is the wsgate binary that TestMain builds once for the whole run.
	gateBin string
	// backendDir is the absolute path of e2e/backend (server.js, client.js, sio-client.js).
	backendDir string
	// httpClient is used for every plain HTTP request of the tests; TestMain closes its idle
	// connections before checking for leaked goroutines.
	httpClient = &http.Client{Timeout: waitLimit, Transport: &http.Transport{}}
)

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	wd, err := os.Getwd()
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	backendDir = filepath.Join(wd, "backend")
	if _, err := os.Stat(filepath.Join(backendDir, "node_modules")); err != nil {
		fmt.Fprintln(os.Stderr, "e2e: e2e/backend/node_modules is missing: run `make e2e-deps` (or `npm ci --prefix e2e/backend`)")
		return 1
	}
	if _, err := exec.LookPath("node"); err != nil {
		fmt.Fprintln(os.Stderr, "e2e: node is not on PATH: the Node backend and clients need it")
		return 1
	}

	tmp, err := os.MkdirTemp("", "wsgate-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	defer os.RemoveAll(tmp)

	// WSGATE_E2E_BIN runs the suite against a gate built elsewhere (a release build, an image's
	// binary) instead of building this tree.
	gateBin = os.Getenv("WSGATE_E2E_BIN")
	if gateBin == "" {
		gateBin = filepath.Join(tmp, "wsgate")
		args := []string{"build", "-o", gateBin}
		if raceEnabled {
			args = append(args, "-race")
		}
		build := exec.Command("go", append(args, "github.com/holo/wsgate")...)
		build.Dir = filepath.Dir(wd)
		if out, err := build.CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "e2e: building the gate failed: %v\n%s", err, out)
			return 1
		}
	}

	code := m.Run()
	httpClient.CloseIdleConnections()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "e2e: leaked goroutines:", err)
			code = 1
		}
	}
	return code
}

// outputBuffer collects a process's stdout and stderr; exec copies into it from its own goroutines.
type outputBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *outputBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *outputBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// proc is a child process owned by one test: killed with its process group in t.Cleanup, its
// output logged when the test failed.
type proc struct {
	name string
	cmd  *exec.Cmd
	out  *outputBuffer
	done chan struct{} // closed once cmd.Wait returned
}

func startProc(t testing.TB, name string, cmd *exec.Cmd) *proc {
	t.Helper()
	p := &proc{name: name, cmd: cmd, out: &outputBuffer{}, done: make(chan struct{})}
	cmd.Stdout = p.out
	cmd.Stderr = p.out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.WaitDelay = 2 * time.Second
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", name, err)
	}
	go func() {
		defer close(p.done)
		_ = cmd.Wait()
	}()
	t.Cleanup(func() {
		if !p.exited() {
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		}
		select {
		case <-p.done:
		case <-time.After(waitLimit):
			t.Errorf("%s (pid %d) did not exit after SIGKILL", name, cmd.Process.Pid)
		}
		out := p.out.String()
		if raceEnabled && strings.Contains(out, "WARNING: DATA RACE") {
			t.Errorf("%s reported a data race", name)
		}
		if t.Failed() {
			t.Logf("output of %s:\n%s", name, tail(out, 32<<10))
		}
	})
	return p
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "…" + s[len(s)-n:]
}

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func freePort(t testing.TB) int {
	t.Helper()
	portsMu.Lock()
	defer portsMu.Unlock()
	for range 1000 {
		// Below the kernel's ephemeral range (32768-60999 by default), so
		// the many client connections of a run never take a port between
		// here and the server's listen; handed-out ports are not reused
		// within the run.
		port := 20000 + rand.IntN(12000)
		if portsUsed[port] {
			continue
		}
		ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if err != nil {
			continue
		}
		ln.Close()
		portsUsed[port] = true
		return port
	}
	t.Fatalf("freePort: no free port in 20000-31999")
	return 0
}

var (
	portsMu   sync.Mutex
	portsUsed = map[int]bool{}
)

// waitFor polls cond every 20 ms until it holds or waitLimit passes.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitLimit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", waitLimit, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// startNodeBackend runs e2e/backend/server.js on a free port with args and returns its http://
// base URL.
func startNodeBackend(t testing.TB, args ...string) (baseURL string) {
	t.Helper()
	argv := append([]string{filepath.Join(backendDir, "server.js"), "--port", "0"}, args...)
	p := startProc(t, "node backend", exec.Command("node", argv...))
	var port string
	waitFor(t, "the node backend to print LISTENING", func() bool {
		for _, line := range strings.Split(p.out.String(), "\n") {
			if rest, ok := strings.CutPrefix(line, "LISTENING "); ok {
				port = strings.TrimSpace(rest)
				return true
			}
		}
		if p.exited() {
			t.Fatalf("the node backend exited early:\n%s", p.out.String())
		}
		return false
	})
	return "http://127.0.0.1:" + port
}

// goBackend is an echo backend written with coder/websocket, the Go library a backend behind the
// gate would typically use. Paths:
//
//	/close?code=C&reason=R  closes with C, R right after the handshake
//	/headers                sends {"url":..., "headers":{...}} (lower-case names) and then echoes
//	/send-on-open?n=K       sends K text messages hello-0 … hello-(K-1) and then echoes
//	/slow-echo?delay=D      echoes every message D after it arrived, one at a time
//	/die                    drops the TCP connection after the first message, without a close frame
//	/forbidden              answers the upgrade with 403 and the body "forbidden by backend"
//	anything else           echoes every message with its type
//
// It speaks the subprotocol "chat" only. Plain HTTP: POST /post echoes the body and its
// Content-Type, GET /hello answers "hello"; both set X-Backend: go.
type goBackend struct {
	URL string // http://127.0.0.1:port

	// closes receives, per ended connection, the close frame the backend got from the gate, or
	// a CloseError with Code -1 when the connection ended without one.
	closes closeLog
}

// startGoBackend starts a goBackend and returns its http:// base URL.
func startGoBackend(t testing.TB) (baseURL string) {
	t.Helper()
	return newGoBackend(t).URL
}

func newGoBackend(t testing.TB) *goBackend {
	t.Helper()
	b := &goBackend{closes: newCloseLog()}
	b.URL = serveBackend(t, "go backend", b.serve).URL
	return b
}

// serveBackend runs a test backend on loopback. Its handlers get a context
// that is cancelled at cleanup, and cleanup waits for them to return.
func serveBackend(t testing.TB, name string, serve func(ctx context.Context, w http.ResponseWriter, r *http.Request)) *httptest.Server {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var handlers sync.WaitGroup
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		handlers.Add(1)
		defer handlers.Done()
		serve(ctx, w, r)
	}))
	t.Cleanup(func() {
		cancel()
		srv.CloseClientConnections()
		srv.Close()
		done := make(chan struct{})
		go func() { handlers.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(waitLimit):
			t.Errorf("%s handlers did not return within %v", name, waitLimit)
		}
	})
	return srv
}

// closeLog records, for each connection a test backend saw end, the close
// frame it got (Code -1 when the connection ended without one).
type closeLog chan websocket.CloseError

func newCloseLog() closeLog { return make(closeLog, 1024) }

func (l closeLog) record(err error) {
	var ce websocket.CloseError
	if !errors.As(err, &ce) {
		ce = websocket.CloseError{Code: -1, Reason: err.Error()}
	}
	select {
	case l <- ce:
	default:
	}
}

// next returns the next recorded close, waiting at most waitLimit.
func (l closeLog) next(t testing.TB, who string) websocket.CloseError {
	t.Helper()
	select {
	case ce := <-l:
		return ce
	case <-time.After(waitLimit):
		t.Fatalf("%s saw no connection end within %v", who, waitLimit)
		return websocket.CloseError{}
	}
}

func (b *goBackend) serve(ctx context.Context, w http.ResponseWriter, r *http.Request) {
	if !strings.EqualFold(r.Header.Get("Upgrade"), "websocket") {
		w.Header().Set("X-Backend", "go")
		switch r.URL.Path {
		case "/hello":
			io.WriteString(w, "hello")
		case "/post":
			// Read the whole body first: an HTTP/1 handler that writes while reading is not
			// full duplex, and the server stops the body after the first write.
			body, err := io.ReadAll(r.Body)
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			if ct := r.Header.Get("Content-Type"); ct != "" {
				w.Header().Set("Content-Type", ct)
			}
			w.Write(body)
		default:
			http.NotFound(w, r)
		}
		return
	}
	if r.URL.Path == "/forbidden" {
		w.Header().Set("Content-Type", "text/plain")
		w.WriteHeader(http.StatusForbidden)
		io.WriteString(w, "forbidden by backend")
		return
	}
	c, err := websocket.Accept(w, r, &websocket.AcceptOptions{
		Subprotocols:       []string{"chat"},
		InsecureSkipVerify: true, // a backend behind the gate sees the browser's Origin
	})
	if err != nil {
		return
	}
	defer c.CloseNow()
	c.SetReadLimit(64 << 20)

	q := r.URL.Query()
	switch r.URL.Path {
	case "/close":
		code, _ := strconv.Atoi(q.Get("code"))
		_ = c.Close(websocket.StatusCode(code), q.Get("reason"))
		return
	case "/headers":
		hdr := map[string]string{}
		for k, v := range r.Header {
			hdr[strings.ToLower(k)] = strings.Join(v, ", ")
		}
		p, _ := json.Marshal(map[string]any{"url": r.URL.RequestURI(), "headers": hdr, "host": r.Host})
		if c.Write(ctx, websocket.MessageText, p) != nil {
			return
		}
	case "/send-on-open":
		n, _ := strconv.Atoi(q.Get("n"))
		for i := range n {
			if c.Write(ctx, websocket.MessageText, []byte("hello-"+strconv.Itoa(i))) != nil {
				return
			}
		}
	case "/slow-echo":
		delay, _ := time.ParseDuration(q.Get("delay"))
		for {
			typ, p, err := c.Read(ctx)
			if err != nil {
				b.recordClose(err)
				return
			}
			time.Sleep(delay)
			if err := c.Write(ctx, typ, p); err != nil {
				b.recordClose(err)
				return
			}
		}
	case "/die":
		_, _, err := c.Read(ctx)
		if err != nil {
			b.recordClose(err)
		}
		return // the deferred CloseNow drops TCP without a close frame
	}
	for {
		typ, rd, err := c.Reader(ctx)
		if err != nil {
			b.recordClose(err)
			return
		}
		wr, err := c.Writer(ctx, typ)
		if err != nil {
			b.recordClose(err)
			return
		}
		// A message is echoed while it streams in, so the connection can end in the middle of
		// this copy (a close frame between fragments).
		if _, err := io.Copy(wr, rd); err != nil {
			b.recordClose(err)
			return
		}
		if err := wr.Close(); err != nil {
			b.recordClose(err)
			return
		}
	}
}

func (b *goBackend) recordClose(err error) { b.closes.record(err) }

// nextClose returns the next close the backend recorded, waiting at most waitLimit.
func (b *goBackend) nextClose(t testing.TB) websocket.CloseError {
	t.Helper()
	return b.closes.next(t, "the go backend")
}

// Gate is one running wsgate process.
type Gate struct {
	URL   string // ws://127.0.0.1:port, the client listener
	HTTP  string // http://127.0.0.1:port, the same listener
	Admin string // http://127.0.0.1:port, the admin listener
	Cmd   *exec.Cmd

	proc *proc
}

// startGate runs the gate on free loopback ports with text logs plus args, and waits until
// /readyz answers 200.
func startGate(t testing.TB, args ...string) *Gate {
	t.Helper()
	return startGateEnv(t, nil, args...)
}

// startGateEnv is startGate with extra environment variables (KEY=value) for the gate. A free
// port can be taken by a parallel test between freePort and the gate's listen; then the gate is
// started again on new ports.
func startGateEnv(t testing.TB, env []string, args ...string) *Gate {
	t.Helper()
	for attempt := 1; ; attempt++ {
		g, busy := tryStartGate(t, env, args)
		if !busy {
			return g
		}
		if attempt == 5 {
			t.Fatalf("the gate found its ports taken 5 times:\n%s", g.proc.out.String())
		}
	}
}

func tryStartGate(t testing.TB, env, args []string) (g *Gate, portsTaken bool) {
	t.Helper()
	listen := net.JoinHostPort("127.0.0.1", strconv.Itoa(freePort(t)))
	admin := net.JoinHostPort("127.0.0.1", strconv.Itoa(freePort(t)))
	cmd := exec.Command(gateBin, append([]string{
		"--listen", listen, "--admin-listen", admin, "--log-format", "text",
	}, args...)...)
	cmd.Env = append(gateEnviron(), env...)
	g = &Gate{URL: "ws://" + listen, HTTP: "http://" + listen, Admin: "http://" + admin, Cmd: cmd}
	g.proc = startProc(t, "wsgate", cmd)
	waitFor(t, "the gate's /readyz to answer 200", func() bool {
		if g.proc.exited() {
			if strings.Contains(g.proc.out.String(), "address already in use") {
				portsTaken = true
				return true
			}
			t.Fatalf("the gate exited before it was ready (%v):\n%s", cmd.ProcessState, g.proc.out.String())
		}
		resp, err := httpClient.Get(g.Admin + "/readyz")
		if err != nil {
			return false
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	return g, portsTaken
}

// Signal sends sig to the gate process.
func (g *Gate) Signal(sig os.Signal) error {
	return g.Cmd.Process.Signal(sig)
}

// Wait waits at most 30 s for the gate to exit and returns its exit code: -1 when it was killed
// by a signal, or when it did not exit in time (then it is killed).
func (g *Gate) Wait() (exitCode int) {
	select {
	case <-g.proc.done:
	case <-time.After(30 * time.Second):
		_ = syscall.Kill(-g.Cmd.Process.Pid, syscall.SIGKILL)
		<-g.proc.done
		return -1
	}
	return g.Cmd.ProcessState.ExitCode()
}

// Output is everything the gate printed so far.
func (g *Gate) Output() string { return g.proc.out.String() }

// Metric scrapes /metrics and returns the sum of the samples named name whose labels include
// labels; a series that does not exist counts as 0.
func (g *Gate) Metric(t testing.TB, name string, labels map[string]string) float64 {
	t.Helper()
	samples := g.scrape(t)
	var sum float64
	for _, s := range samples {
		if s.name != name {
			continue
		}
		match := true
		for k, v := range labels {
			if s.labels[k] != v {
				match = false
				break
			}
		}
		if match {
			sum += s.value
		}
	}
	return sum
}

// HasMetric reports whether /metrics has at least one sample named name.
func (g *Gate) HasMetric(t testing.TB, name string) bool {
	t.Helper()
	for _, s := range g.scrape(t) {
		if s.name == name {
			return true
		}
	}
	return false
}

type sample struct {
	name   string
	labels map[string]string
	value  float64
}

func (g *Gate) scrape(t testing.TB) []sample {
	t.Helper()
	resp, err := httpClient.Get(g.Admin + "/metrics")
	if err != nil {
		t.Fatalf("scraping metrics: %v", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("scraping metrics: status %d, err %v", resp.StatusCode, err)
	}
	samples, err := parseMetrics(string(body))
	if err != nil {
		t.Fatalf("parsing metrics: %v\n%s", err, body)
	}
	return samples
}

// parseMetrics parses the Prometheus text exposition format (version 0.0.4).
func parseMetrics(text string) ([]sample, error) {
	var out []sample
	for n, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || line[0] == '#' {
			continue
		}
		s := sample{labels: map[string]string{}}
		i := strings.IndexAny(line, "{ ")
		if i < 0 {
			return nil, fmt.Errorf("line %d: no value: %q", n+1, line)
		}
		s.name = line[:i]
		rest := line[i:]
		if rest[0] == '{' {
			rest = rest[1:]
			for {
				rest = strings.TrimLeft(rest, " ,")
				if rest == "" {
					return nil, fmt.Errorf("line %d: unterminated labels", n+1)
				}
				if rest[0] == '}' {
					rest = rest[1:]
					break
				}
				eq := strings.IndexByte(rest, '=')
				if eq < 0 || len(rest) < eq+2 || rest[eq+1] != '"' {
					return nil, fmt.Errorf("line %d: bad label in %q", n+1, line)
				}
				key := strings.TrimSpace(rest[:eq])
				rest = rest[eq+2:]
				var val strings.Builder
				closed := false
				for j := 0; j < len(rest); j++ {
					c := rest[j]
					if c == '\\' && j+1 < len(rest) {
						j++
						switch rest[j] {
						case 'n':
							val.WriteByte('\n')
						default:
							val.WriteByte(rest[j])
						}
						continue
					}
					if c == '"' {
						rest = rest[j+1:]
						closed = true
						break
					}
					val.WriteByte(c)
				}
				if !closed {
					return nil, fmt.Errorf("line %d: unterminated label value", n+1)
				}
				s.labels[key] = val.String()
			}
		}
		fields := strings.Fields(rest)
		if len(fields) == 0 {
			return nil, fmt.Errorf("line %d: no value: %q", n+1, line)
		}
		v, err := strconv.ParseFloat(fields[0], 64)
		if err != nil {
			return nil, fmt.Errorf("line %d: %w", n+1, err)
		}
		s.value = v
		out = append(out, s)
	}
	return out, nil
}

// runNodeClient runs e2e/backend/client.js with args and returns its JSON lines.
func runNodeClient(t testing.TB, args ...string) []map[string]any {
	t.Helper()
	return runNode(t, "client.js", args...)
}

// runSIOClient runs e2e/backend/sio-client.js against url and returns its JSON lines.
func runSIOClient(t testing.TB, url string) []map[string]any {
	t.Helper()
	return runNode(t, "sio-client.js", url)
}

func runNode(t testing.TB, script string, args ...string) []map[string]any {
	t.Helper()
	stdout, stderr, err := execNode(script, args, 20*time.Second)
	var events []map[string]any
	for _, line := range strings.Split(stdout, "\n") {
		if strings.TrimSpace(line) == "" {
			continue
		}
		var ev map[string]any
		if jerr := json.Unmarshal([]byte(line), &ev); jerr != nil {
			t.Fatalf("%s printed a line that is not JSON: %q\nstderr: %s", script, line, stderr)
		}
		events = append(events, ev)
	}
	if err != nil {
		t.Errorf("%s %v: %v\nstdout: %s\nstderr: %s", script, args, err, stdout, stderr)
	}
	return events
}

// execNode runs a script of e2e/backend with node, bounded by timeout.
func execNode(script string, args []string, timeout time.Duration) (stdout, stderr string, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "node", append([]string{filepath.Join(backendDir, script)}, args...)...)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	cmd.WaitDelay = 2 * time.Second
	err = cmd.Run()
	return out.String(), errOut.String(), err
}

// eventsWith returns the events that have the key.
func eventsWith(events []map[string]any, key string) []map[string]any {
	var out []map[string]any
	for _, ev := range events {
		if _, ok := ev[key]; ok {
			out = append(out, ev)
		}
	}
	return out
}

// dial opens a coder/websocket client connection that is closed in t.Cleanup.
func dial(t testing.TB, url string, opts *websocket.DialOptions) *websocket.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	c, resp, err := websocket.Dial(ctx, url, opts)
	if err != nil {
		status := 0
		if resp != nil {
			status = resp.StatusCode
		}
		t.Fatalf("dial %s: status %d: %v", url, status, err)
	}
	t.Cleanup(func() { c.CloseNow() })
	return c
}

// readClose reads until the connection ends and returns the close frame the client received;
// it fails the test when the connection ended without one or a data message arrived.
func readClose(t testing.TB, c *websocket.Conn) websocket.CloseError {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	typ, p, err := c.Read(ctx)
	if err == nil {
		t.Fatalf("got a %v message %q, want a close frame", typ, tail(string(p), 64))
	}
	var ce websocket.CloseError
	if !errors.As(err, &ce) {
		t.Fatalf("the connection ended without a close frame: %v", err)
	}
	return ce
}

// rawConn is a hand-written WebSocket client that sees individual frames and controls every
// handshake header, for the checks that a library client hides.
type rawConn struct {
	net.Conn
	br *bufio.Reader
}

// rawClientKey is RFC 6455's sample key; its accept value is rawClientAccept.
const (
	rawClientKey    = "dGhlIHNhbXBsZSBub25jZQ=="
	rawClientAccept = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
)

// rawDial sends a handshake for path to the gate with extra headers and returns the connection
// and the gate's response; the connection is closed in t.Cleanup.
func rawDial(t testing.TB, hostport, path string, header http.Header) (*rawConn, *http.Response) {
	t.Helper()
	nc, err := net.DialTimeout("tcp", hostport, waitLimit)
	if err != nil {
		t.Fatalf("raw dial: %v", err)
	}
	t.Cleanup(func() { nc.Close() })
	_ = nc.SetDeadline(time.Now().Add(waitLimit))
	var req strings.Builder
	fmt.Fprintf(&req, "GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n", path, hostport)
	fmt.Fprintf(&req, "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n", rawClientKey)
	for k, vs := range header {
		for _, v := range vs {
			fmt.Fprintf(&req, "%s: %s\r\n", k, v)
		}
	}
	req.WriteString("\r\n")
	if _, err := io.WriteString(nc, req.String()); err != nil {
		t.Fatalf("raw handshake: %v", err)
	}
	br := bufio.NewReader(nc)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("raw handshake response: %v", err)
	}
	return &rawConn{Conn: nc, br: br}, resp
}

type rawFrame struct {
	fin     bool
	opcode  byte
	masked  bool
	payload []byte
}

func (c *rawConn) readFrame() (rawFrame, error) {
	var h [2]byte
	if _, err := io.ReadFull(c.br, h[:]); err != nil {
		return rawFrame{}, err
	}
	f := rawFrame{fin: h[0]&0x80 != 0, opcode: h[0] & 0x0f, masked: h[1]&0x80 != 0}
	n := uint64(h[1] & 0x7f)
	switch n {
	case 126:
		var ext [2]byte
		if _, err := io.ReadFull(c.br, ext[:]); err != nil {
			return f, err
		}
		n = uint64(ext[0])<<8 | uint64(ext[1])
	case 127:
		var ext [8]byte
		if _, err := io.ReadFull(c.br, ext[:]); err != nil {
			return f, err
		}
		n = 0
		for _, b := range ext {
			n = n<<8 | uint64(b)
		}
	}
	if n > 64<<20 {
		return f, fmt.Errorf("frame of %d bytes", n)
	}
	var mask [4]byte
	if f.masked {
		if _, err := io.ReadFull(c.br, mask[:]); err != nil {
			return f, err
		}
	}
	f.payload = make([]byte, n)
	if _, err := io.ReadFull(c.br, f.payload); err != nil {
		return f, err
	}
	if f.masked {
		for i := range f.payload {
			f.payload[i] ^= mask[i%4]
		}
	}
	return f, nil
}

// writeFrame writes one masked frame, as a client must (RFC 6455 section 5.3).
func (c *rawConn) writeFrame(fin bool, opcode byte, payload []byte) error {
	first := opcode
	if fin {
		first |= 0x80
	}
	return c.writeRawFrame(first, true, payload)
}

// writeRawFrame writes a frame whose first byte (FIN, RSV1-3, opcode) is first, masked or not,
// so tests can send frames that break the protocol.
func (c *rawConn) writeRawFrame(first byte, masked bool, payload []byte) error {
	_, err := c.Write(encodeRawFrame(first, masked, payload))
	return err
}

// encodeRawFrame encodes one frame whose first byte (FIN, RSV1-3, opcode) is first, with the
// shortest length form; a masked frame uses a fixed key.
func encodeRawFrame(first byte, masked bool, payload []byte) []byte {
	var b bytes.Buffer
	b.WriteByte(first)
	var maskBit byte
	if masked {
		maskBit = 0x80
	}
	switch n := len(payload); {
	case n < 126:
		b.WriteByte(maskBit | byte(n))
	case n <= 0xffff:
		b.Write([]byte{maskBit | 126, byte(n >> 8), byte(n)})
	default:
		b.WriteByte(maskBit | 127)
		for i := 7; i >= 0; i-- {
			b.WriteByte(byte(uint64(n) >> (8 * i)))
		}
	}
	if !masked {
		b.Write(payload)
		return b.Bytes()
	}
	mask := [4]byte{0x12, 0x34, 0x56, 0x78}
	b.Write(mask[:])
	for i, p := range payload {
		b.WriteByte(p ^ mask[i%4])
	}
	return b.Bytes()
}

// readCloseCode reads frames until a close frame and returns its code (1005 when it has none),
// or -1 when the connection ended without one.
func (c *rawConn) readCloseCode() (code int, reason string) {
	for {
		f, err := c.readFrame()
		if err != nil {
			return -1, err.Error()
		}
		if f.opcode != 0x8 {
			continue
		}
		if len(f.payload) < 2 {
			return 1005, ""
		}
		return int(f.payload[0])<<8 | int(f.payload[1]), string(f.payload[2:])
	}
}

// gateEnviron is this process's environment without WSGATE_E2E_BIN, which
// is the harness's variable, not a flag's: the gate refuses WSGATE_*
// variables it does not know.
func gateEnviron() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "WSGATE_E2E_BIN=") {
			env = append(env, kv)
		}
	}
	return env
}
