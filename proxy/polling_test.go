package proxy

import (
	"bufio"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gobwas/ws"

	"github.com/holo/wsgate/limit"
	"github.com/holo/wsgate/policy"
)

// TestAmbiguousEIOQuery: a request under the socket.io path that names
// EIO, transport or sid twice gets 400; the gate reads the first value and
// engine.io the last, so a POST of many packets could count as one plain
// request, or a session's open skip the connection rules.
func TestAmbiguousEIOQuery(t *testing.T) {
	reached := 0
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { reached++ }))
	t.Cleanup(up.Close)
	g := newGate(t, up.URL, func(c *Config) { c.SocketIOPath = "/socket.io/" })
	for _, q := range []string{
		"EIO=3&EIO=4&transport=polling&sid=s",
		"EIO&EIO=4&transport=polling&sid=s",
		"EIO=4&transport=websocket&transport=polling",
		"EIO=4&transport=polling&sid=a&sid=b",
	} {
		res, err := http.Post(g.URL+"/socket.io/?"+q, "text/plain", strings.NewReader("4x"))
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		if res.StatusCode != http.StatusBadRequest {
			t.Errorf("%s: status %d, want 400", q, res.StatusCode)
		}
	}
	if reached != 0 {
		t.Fatalf("%d ambiguous requests reached the upstream", reached)
	}
	res, err := http.Get(g.URL + "/other/?sid=a&sid=b")
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if reached != 1 {
		t.Fatalf("a repeated parameter outside the socket.io path was refused (%d)", res.StatusCode)
	}
}

// TestOwnSessionBounded: a refused client POSTing CONNECTs to the gate's
// own session gets one CONNECT_ERROR per namespace, whatever it sends.
func TestOwnSessionBounded(t *testing.T) {
	p := &Proxy{web: web{sessions: newSessions(), sioEventHead: []byte(`["wsgate:limited",`)}}
	s := &session{fake: true, d: limit.Decision{Scope: "user", RetryAfter: 5 * time.Second}}
	if !p.web.sessions.add("sid", "ip", s) {
		t.Fatal("no room")
	}
	body := []byte(strings.Repeat("40\x1e", (1<<20)/3) + "40/chat,")
	for range 3 {
		p.ownPost(s, body)
	}
	if len(s.out) != 2 {
		t.Fatalf("3 POSTs of 350k CONNECTs to two namespaces queued %d answers, want 2", len(s.out))
	}
	var many strings.Builder
	for i := range 100 {
		many.WriteString("40/n" + strconv.Itoa(i) + ",\x1e")
	}
	p.ownPost(s, []byte(many.String()))
	if len(s.out) != maxOwnAnswers {
		t.Fatalf("%d answers for 102 namespaces, want %d", len(s.out), maxOwnAnswers)
	}
}

// TestSidTableBounds: one client IP holds maxSessionsPerIP entries at most,
// others still get theirs, and expired entries go without their sid being
// asked for again.
func TestSidTableBounds(t *testing.T) {
	ss := newSessions()
	for i := range maxSessionsPerIP {
		if !ss.add("a"+strconv.Itoa(i), "attacker", &session{}) {
			t.Fatalf("entry %d refused", i)
		}
	}
	if ss.add("one-more", "attacker", &session{}) {
		t.Fatal("one client IP went past its share")
	}
	if !ss.add("v", "victim", &session{}) {
		t.Fatal("another client refused")
	}
	ss.mu.Lock()
	for _, e := range ss.t.m {
		e.v.expires = time.Now().Add(-time.Second)
	}
	ss.t.swept = time.Now().Add(-sessionTTL)
	ss.mu.Unlock()
	if !ss.add("w", "victim", &session{}) {
		t.Fatal("refused after every entry expired")
	}
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if len(ss.t.m) != 1 || ss.t.perIP["attacker"] != 0 || ss.t.perIP["victim"] != 1 {
		t.Fatalf("after expiry: %d entries, counts %v; want only the new one", len(ss.t.m), ss.t.perIP)
	}
}

// TestPollDropsOneClientCannotFill: made-up sids of one client do not turn
// another client's drops into closes.
func TestPollDropsOneClientCannotFill(t *testing.T) {
	p := &Proxy{web: web{drops: newPollDrops()}}
	every := &policy.Rule{Name: "chat", Action: policy.Drop, CloseAfter: 3,
		Limits: []policy.Window{{Limit: 1, Per: time.Second}}}
	never := &policy.Rule{Name: "chat", Action: policy.Drop, Limits: []policy.Window{{Limit: 1, Per: time.Second}}}
	for i := range maxSessions {
		p.dropsPacket("made-up-"+strconv.Itoa(i), "attacker", every, "", []byte("42[]"))
		p.web.drops.notify("made-up-"+strconv.Itoa(i), "attacker", []byte("N"))
	}
	if !p.dropsPacket("victim-sid", "victim", every, "", []byte("42[]")) {
		t.Fatal("a drop under close-after 3 closed another client's session")
	}
	if !p.dropsPacket("other-sid", "victim", never, "", []byte("42[]")) {
		t.Fatal("a drop under a rule without close-after closed the session")
	}
	if p.dropsPacket("s", "victim", never, "", []byte("bAQID")) {
		t.Fatal("an attachment ('b', base64) was dropped alone: the app would read what follows as garbage")
	}
}

// TestPollBodyUnreadable: a POST whose body cannot be read gets 400, not
// an empty 200.
func TestPollBodyUnreadable(t *testing.T) {
	up := httptest.NewServer(http.NotFoundHandler())
	t.Cleanup(up.Close)
	g := newGate(t, up.URL, func(c *Config) { c.SocketIOPath = "/socket.io/" })
	rr := httptest.NewRecorder()
	r := httptest.NewRequest(http.MethodPost, "/socket.io/?EIO=4&transport=polling&sid=abc", nil)
	r.Body = badBody{}
	g.proxy.ServeHTTP(rr, r)
	if rr.Code != http.StatusBadRequest {
		t.Fatalf("status %d %q, want 400", rr.Code, rr.Body.String())
	}
}

type badBody struct{}

func (badBody) Read([]byte) (int, error) { return 0, errors.New("malformed chunked encoding") }
func (badBody) Close() error             { return nil }

// TestPollDropLogged: a POST whose dropped packet is followed by an
// allowed one still writes the refusal's log line.
func TestPollDropLogged(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "ok") }))
	t.Cleanup(up.Close)
	live, lim := rulesAndLimiter(t, "classes:\n  - {name: chat, socketio-event: chat}\nrules:\n  - {name: chat, class: chat, key: user, limits: [1/30s], action: drop}\n")
	var logs strings.Builder
	var mu sync.Mutex
	g := newGate(t, up.URL, func(c *Config) {
		c.SocketIOPath, c.Limiter, c.Rules = "/socket.io/", lim, live
		c.Logger = slog.New(slog.NewTextHandler(lockedWriter{&mu, &logs}, nil))
	})
	body := `42["chat","a"]` + "\x1e" + `42["chat","b"]` + "\x1e" + `42["other"]`
	res, err := http.Post(g.URL+"/socket.io/?EIO=4&transport=polling&sid=s1", "text/plain", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	mu.Lock()
	defer mu.Unlock()
	if n := strings.Count(logs.String(), `msg="rate limited"`); n != 1 {
		t.Fatalf("%d refusal log lines for a POST with one dropped packet, want 1:\n%s", n, logs.String())
	}
}

// lockedWriter serializes writes to w.
type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// TestByteRefusalKeepsNamespace: a socket.io message refused by a byte
// rule at a later frame gets its refusal event in the namespace it was
// sent in, where the app listens.
func TestByteRefusalKeepsNamespace(t *testing.T) {
	up := rawUpstream(t, func(c net.Conn, br *bufio.Reader) {
		for {
			h, _, err := readFrame(br)
			if err != nil {
				return
			}
			if h.OpCode == ws.OpClose {
				_, _ = c.Write(serverFrame(ws.OpClose, []byte{0x0f, 0xa8}))
				return
			}
		}
	})
	live, lim := rulesAndLimiter(t, "rules:\n  - {name: bytes, key: ip, count: bytes, limits: [100B/30s]}\n")
	g := newGate(t, up.URL, func(c *Config) { c.SocketIOPath, c.Limiter, c.Rules = "/socket.io/", lim, live })
	conn, br := rawClient(t, g, "/socket.io/?EIO=4&transport=websocket")
	first := maskedFrame(false, 0x1, []byte(`42/chat,["msg","`))
	more := maskedFrame(true, 0x0, []byte(strings.Repeat("x", 120)+`"]`))
	if _, err := conn.Write(append(first, more...)); err != nil {
		t.Fatal(err)
	}
	h, p, err := readFrame(br)
	if err != nil || h.OpCode != ws.OpText {
		t.Fatalf("first frame %v %v", h.OpCode, err)
	}
	if !strings.HasPrefix(string(p), `42/chat,["wsgate:limited"`) {
		t.Fatalf("refusal %q, want it in the message's namespace /chat", p)
	}
}

// TestClassifySplitAndBinary: a message whose first bytes come apart from
// its header (a TCP split, or a client that writes them so), and a binary
// one, are classified as a text message in one piece is: a class's rule
// cannot be dodged that way.
func TestClassifySplitAndBinary(t *testing.T) {
	const rules = "classes:\n  - {name: chat, prefix: \"chat:\"}\nrules:\n  - {name: chat, class: chat, key: user, limits: [1/30s], action: drop}\n"
	for _, tc := range []struct {
		name  string
		op    byte
		split bool
	}{{"split text", 0x1, true}, {"binary", 0x2, false}} {
		t.Run(tc.name, func(t *testing.T) {
			live, lim := rulesAndLimiter(t, rules)
			g := newGate(t, backend(t).URL, func(c *Config) { c.Limiter, c.Rules = lim, live })
			conn, br := rawClient(t, g, "/echo")
			for _, m := range []string{"chat:1", "chat:2"} {
				frame := maskedFrame(true, tc.op, []byte(m))
				if tc.split {
					if _, err := conn.Write(frame[:7]); err != nil { // the header and "c"
						t.Fatal(err)
					}
					time.Sleep(50 * time.Millisecond)
					frame = frame[7:]
				}
				if _, err := conn.Write(frame); err != nil {
					t.Fatal(err)
				}
			}
			if _, err := conn.Write(maskedFrame(true, 0x1, []byte("end"))); err != nil {
				t.Fatal(err)
			}
			var got []string
			for {
				_, p, err := readFrame(br)
				if err != nil {
					t.Fatalf("after %q: %v", got, err)
				}
				if got = append(got, string(p)); string(p) == "end" {
					break
				}
			}
			// The notice goes out at the upstream's next message boundary:
			// before or after chat:1's echo.
			joined := strings.Join(got, "\n")
			if len(got) != 3 || !strings.Contains(joined, "chat:1\n") || strings.Contains(joined, "chat:2") ||
				!strings.Contains(joined, `"rule":"chat"`) {
				t.Fatalf("frames %q; want chat:1's echo and the drop's notice, then end", got)
			}
		})
	}
}

// TestCloseAfterUsesTiersWindow: close-after counts drops in the first
// window of the limits that applied to the client: a tier's, when it has
// its own.
func TestCloseAfterUsesTiersWindow(t *testing.T) {
	r := &policy.Rule{Name: "chat", Action: policy.Drop, CloseAfter: 3,
		Limits: []policy.Window{{Limit: 5, Per: time.Second}},
		Tiers:  map[string][]policy.Window{"pro": {{Limit: 1000, Per: time.Minute}}}}
	for tier, closes := range map[string]bool{"pro": true, "": false} {
		dc := make(dropCounts)
		now := time.Now()
		var closed bool
		for i := range 3 {
			closed, _ = dc.add(r, tier, now.Add(time.Duration(i)*2*time.Second))
		}
		if closed != closes {
			t.Errorf("tier %q: three drops 2 s apart close %v, want %v", tier, closed, closes)
		}
	}
}

// classGate is a gate in front of the echo backend under a rules file
// with one class, chat (messages that start with "chat:"), and a rule for
// it.
func classGate(t *testing.T, mod func(*Config)) *gate {
	t.Helper()
	live, lim := rulesAndLimiter(t, "classes:\n  - {name: chat, prefix: \"chat:\"}\nrules:\n  - {name: chat, class: chat, key: user, limits: [5/30s]}\n")
	return newGate(t, backend(t).URL, func(c *Config) {
		c.Limiter, c.Rules = lim, live
		if mod != nil {
			mod(c)
		}
	})
}

// TestClassifyWaitFlushesBatch: frames batched for the upstream go out
// before the wait for the next message's first bytes: a client whose next
// message waits on a reply to the one before gets that reply.
func TestClassifyWaitFlushesBatch(t *testing.T) {
	g := classGate(t, nil)
	conn, br := rawClient(t, g, "/echo")
	b := maskedFrame(true, 0x1, []byte("chat: sent when the reply came"))
	if _, err := conn.Write(append(maskedFrame(true, 0x1, []byte("hello")), b[:7]...)); err != nil {
		t.Fatal(err)
	}
	if _, p, err := readFrame(br); err != nil || string(p) != "hello" {
		t.Fatalf("the first message's echo while the second waits: %q %v", p, err)
	}
}

// TestClassifyWaitIsTimed: the wait for a message's first bytes, to
// classify it, runs under the message timeout like the rest of the
// message: a client that sends a header and stalls is closed with 1008.
func TestClassifyWaitIsTimed(t *testing.T) {
	g := classGate(t, func(c *Config) { c.MessageTimeout = 200 * time.Millisecond })
	conn, br := rawClient(t, g, "/echo")
	frame := maskedFrame(true, 0x1, []byte("chat: a message that never comes whole"))
	if _, err := conn.Write(frame[:8]); err != nil { // the header and two bytes
		t.Fatal(err)
	}
	if got := readClose(t, br); got != 1008 {
		t.Fatalf("close %d, want 1008 (message timeout)", got)
	}
}

// rulesAndLimiter returns the policy of a rules file holding yaml and a
// memory-store limiter, closed when the test ends.
func rulesAndLimiter(t *testing.T, yaml string) (*policy.Live, *limit.Limiter) {
	t.Helper()
	f := t.TempDir() + "/rules.yaml"
	if err := os.WriteFile(f, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	live, err := policy.NewLive(f)
	if err != nil {
		t.Fatal(err)
	}
	return live, memoryLimiter(t)
}

// memoryLimiter is a memory-store limiter, closed when the test ends.
func memoryLimiter(t *testing.T) *limit.Limiter {
	t.Helper()
	lim, err := limit.New(limit.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lim.Close() })
	return lim
}
