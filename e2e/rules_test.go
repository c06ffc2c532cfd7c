//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
)

const mRulesReloads = "holo_ws_rules_reloads_total"

// rulesGate starts a gate in front of upstream with the rules file content
// and HS256 auth; it returns the gate and the file's path.
func rulesGate(t *testing.T, upstream, rules, secretFile string, args ...string) (*Gate, string) {
	t.Helper()
	f := writeTestFile(t, "rules.yaml", []byte(rules))
	return startGate(t, slices.Concat([]string{"--upstream", upstream, "--rules-file", f,
		"--jwt-hmac-secret-file", secretFile}, args)...), f
}

// ruleRefusal checks p is the 429 JSON of a rules file's rule and returns it.
func ruleRefusal(t testing.TB, p []byte, rule, scope string) {
	t.Helper()
	var r struct {
		Code         int    `json:"code"`
		Error        string `json:"error"`
		Scope        string `json:"scope"`
		Rule         string `json:"rule"`
		RetryAfterMs int64  `json:"retryAfterMs"`
	}
	if err := json.Unmarshal(p, &r); err != nil {
		t.Fatalf("refusal %q: %v", p, err)
	}
	if r.Code != 429 || r.Error != "Rate limit exceeded" || r.Rule != rule || r.Scope != scope || r.RetryAfterMs <= 0 {
		t.Fatalf("refusal %s, want code 429, rule %q, scope %q, retryAfterMs > 0", p, rule, scope)
	}
}

// rawEcho opens a raw WebSocket to g's /echo with token as a Bearer
// credential, its reads and writes bounded by waitLimit.
func rawEcho(t *testing.T, g *Gate, token string) *rawConn {
	t.Helper()
	rc, resp := rawDial(t, atkHostPort(g), "/echo", http.Header{"Authorization": {"Bearer " + token}})
	if resp.StatusCode != http.StatusSwitchingProtocols {
		rc.Close()
		t.Fatalf("handshake: %d", resp.StatusCode)
	}
	_ = rc.SetDeadline(time.Now().Add(waitLimit))
	return rc
}

// dialCompressed opens a WebSocket to g's /echo with token as a Bearer
// credential and checks that permessage-deflate was negotiated (every
// message compressed: threshold 1).
func dialCompressed(t *testing.T, g *Gate, token string) *websocket.Conn {
	t.Helper()
	opts := bearer(token).options(t)
	opts.CompressionMode, opts.CompressionThreshold = websocket.CompressionNoContextTakeover, 1
	c, resp, err := websocket.Dial(testCtx(t), g.URL+"/echo", opts)
	if err != nil {
		t.Fatal(err)
	}
	if ext := resp.Header.Get("Sec-WebSocket-Extensions"); !strings.Contains(ext, "permessage-deflate") {
		c.CloseNow()
		t.Fatalf("compression not negotiated: %q", ext)
	}
	return c
}

// readText reads the next message of c as text.
func readText(t *testing.T, c *websocket.Conn) string {
	t.Helper()
	typ, p, err := c.Read(testCtx(t))
	if err != nil || typ != websocket.MessageText {
		t.Fatalf("read: %v %q %v", typ, p, err)
	}
	return string(p)
}

func send(t *testing.T, c *websocket.Conn, msg string) {
	t.Helper()
	if err := c.Write(testCtx(t), websocket.MessageText, []byte(msg)); err != nil {
		t.Fatalf("write %q: %v", msg, err)
	}
}

// tokenWith returns an HS256 token for sub with extra claims.
func tokenWith(t testing.TB, secret []byte, sub string, extra map[string]any) string {
	t.Helper()
	c := claimsFor(sub)
	for k, v := range extra {
		c[k] = v
	}
	return makeJWT(t, map[string]any{"alg": "HS256", "typ": "JWT"}, c, hs256(secret))
}

const tiersRules = `
tiers:
  - {name: pro,     when: {claim: plan, in: [pro, enterprise]}}
  - {name: service, when: {claim: roles, contains: internal}, exempt: true}
deny:  {cidrs: [127.0.0.9/32], subjects: [mallory]}
allow: {cidrs: [127.0.0.8/32]}
rules:
  - {name: user-messages, key: user, limits: [3/30s], block: 30s, tiers: {pro: [6/30s]}}
`

// TestRulesTiersAllowDeny: a free user gets the rule's limit and a pro user
// its tier's, each refusal naming the rule; an exempt tier and the allow
// list skip every rule; the deny list refuses the handshake by subject and
// by IP.
func TestRulesTiersAllowDeny(t *testing.T) {
	t.Parallel()
	secret, secretFile := newHMACSecret(t)
	b := newRecordingBackend(t)
	g, _ := rulesGate(t, b.URL, tiersRules, secretFile)

	for _, tc := range []struct {
		sub    string
		claims map[string]any
		ip     string
		passes int // -1: never refused
	}{
		{"free", nil, "", 3},
		{"paying", map[string]any{"plan": "pro"}, "", 6},
		{"robot", map[string]any{"roles": []string{"internal"}}, "", -1},
		{"visitor", nil, "127.0.0.8", -1},
	} {
		c := dialAs(t, g.URL+"/echo", bearer(tokenWith(t, secret, tc.sub, tc.claims)).from(tc.ip))
		n := tc.passes
		if n < 0 {
			n = 10
		}
		for i := range n {
			echoOK(t, c, tc.sub+"-"+string(rune('a'+i)))
		}
		if tc.passes < 0 {
			continue
		}
		send(t, c, "one too many")
		ruleRefusal(t, []byte(readText(t, c)), "user-messages", "user")
		wantLimitClose(t, c)
	}
	waitMetric(t, g, mRateLimited, map[string]string{"rule": "user-messages", "tier": ""}, 1)
	waitMetric(t, g, mRateLimited, map[string]string{"rule": "user-messages", "tier": "pro"}, 1)
	waitMetric(t, g, mDecisions, map[string]string{"decision": "limited", "tier": "pro"}, 1)
	waitMetric(t, g, mDecisions, map[string]string{"decision": "limited", "tier": ""}, 1)

	for _, p := range []peer{bearer(hsToken(t, secret, "mallory")), bearer(hsToken(t, secret, "eve")).from("127.0.0.9")} {
		_, resp, err := tryDial(t, g.URL+"/echo", p)
		if err == nil || resp == nil || resp.StatusCode != http.StatusForbidden {
			t.Fatalf("a denied client: %v, %v", resp, err)
		}
	}
}

const dropRules = `
rules:
  - {name: chatty, key: user, limits: [2/30s], action: drop, close-after: 3}
`

// TestRulesDrop: a message refused by a drop rule gets the 429 frame and is
// not relayed, the connection stays and the replies owed still come; the
// close-after-th drop closes it with 4008.
func TestRulesDrop(t *testing.T) {
	t.Parallel()
	secret, secretFile := newHMACSecret(t)
	b := newRecordingBackend(t)
	g, _ := rulesGate(t, b.URL, dropRules, secretFile)
	c := dialAs(t, g.URL+"/echo", bearer(hsToken(t, secret, "dropper")))
	echoOK(t, c, "1")
	echoOK(t, c, "2")
	for range 2 {
		send(t, c, "dropped")
		ruleRefusal(t, []byte(readText(t, c)), "chatty", "user")
	}
	// Still open: the third drop is answered on the same connection, and
	// closes it.
	send(t, c, "the third drop")
	ruleRefusal(t, []byte(readText(t, c)), "chatty", "user")
	wantLimitClose(t, c)
	if got := b.msgs.Load(); got != 2 {
		t.Errorf("the backend received %d messages, want the 2 allowed", got)
	}
}

// TestRulesDropCompressed: a compressed message is dropped like any other:
// the gate negotiates client_no_context_takeover, so no later message
// needs its bytes, and the connection stays.
func TestRulesDropCompressed(t *testing.T) {
	t.Parallel()
	secret, secretFile := newHMACSecret(t)
	b := newRecordingBackend(t)
	g, _ := rulesGate(t, b.URL, dropRules, secretFile, "--compression")
	c := dialCompressed(t, g, hsToken(t, secret, "squeezer"))
	defer c.CloseNow()
	echoOK(t, c, strings.Repeat("one ", 20))
	echoOK(t, c, strings.Repeat("two ", 20))
	// Two drops, each answered on the same connection (the third would
	// close it: close-after).
	for range 2 {
		send(t, c, strings.Repeat("dropped ", 20))
		ruleRefusal(t, []byte(readText(t, c)), "chatty", "user")
	}
	if got := b.msgs.Load(); got != 2 {
		t.Errorf("the backend received %d messages, want the 2 allowed", got)
	}
}

const frameRules = `
classes:
  - {name: chat, json-field: {path: type, equals: chat}}
rules:
  - {name: chat, class: chat, key: user, limits: [2/30s], action: drop}
  - {name: bytes, key: user, count: bytes, limits: [4KiB/30s]}
`

// TestRulesCompressedAndFragmented: a compressed message is classified
// from its inflated first bytes; a byte rule counts every frame of a
// fragmented message, and a message that crosses the budget partway ends
// the connection (half a message cannot be taken back).
func TestRulesCompressedAndFragmented(t *testing.T) {
	t.Parallel()
	secret, secretFile := newHMACSecret(t)
	b := newRecordingBackend(t)
	g, _ := rulesGate(t, b.URL, frameRules, secretFile, "--compression")

	c := dialCompressed(t, g, hsToken(t, secret, "squeezed-chat"))
	defer c.CloseNow()
	chat := `{"type":"chat","text":"hello hello hello hello"}`
	echoOK(t, c, chat)
	echoOK(t, c, chat)
	send(t, c, chat)
	ruleRefusal(t, []byte(readText(t, c)), "chat", "user")
	echoOK(t, c, `{"type":"typing","text":"hello hello hello hello"}`)

	rc := rawEcho(t, g, hsToken(t, secret, "fragmenter"))
	defer rc.Close()
	kib := []byte(strings.Repeat("y", 1024))
	if err := rc.writeFrame(false, 0x1, []byte(`{"type":"note"}`)); err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		if err := rc.writeFrame(i == 4, 0x0, kib); err != nil {
			break // the gate may have closed already
		}
	}
	code, _ := rc.readCloseCode()
	if code != 4008 {
		t.Fatalf("a fragmented message of 5 KiB under a 4 KiB byte rule: close %d, want 4008", code)
	}
	waitMetric(t, g, mRateLimited, map[string]string{"rule": "bytes"}, 1)
}

// TestRulesClassPastTheHead: a message whose first 512 bytes do not settle
// its class is followed as it is relayed, and charged to the class the app
// sees before the bytes that settle it go upstream: a member past those
// bytes, a key named again further on (the last one wins in JavaScript's
// parser), a name in another case (Go's decoder into a struct matches it),
// bytes after the object (Go's json.Decoder stops at its end), in a plain,
// a compressed and a fragmented message, one whose first fragment is empty
// and one whose first fragment holds the object whole. The third chat message of each client is refused: part of it has
// gone upstream, so the connection ends with the 429 frame and 4008
// whatever the rule's action, and the app never gets it.
func TestRulesClassPastTheHead(t *testing.T) {
	t.Parallel()
	secret, secretFile := newHMACSecret(t)
	b := newRecordingBackend(t)
	g, _ := rulesGate(t, b.URL, frameRules, secretFile, "--compression")
	pad := `"pad":"` + strings.Repeat("p", 600) + `"`
	late := `{` + pad + `,"type":"chat"}`
	renamed := `{"type":"typing",` + pad + `,"type":"chat"}`
	recased := `{"type":"typing",` + pad + `,"TYPE":"chat"}`

	refusedAt := func(t *testing.T, c *websocket.Conn, msg string) {
		t.Helper()
		send(t, c, msg)
		ruleRefusal(t, []byte(readText(t, c)), "chat", "user")
		_, _, err := c.Read(testCtx(t))
		if code := websocket.CloseStatus(err); code != 4008 {
			t.Fatalf("after the refusal: %v, want close 4008", err)
		}
	}
	t.Run("plain", func(t *testing.T) {
		c, _, err := websocket.Dial(testCtx(t), g.URL+"/echo", bearer(hsToken(t, secret, "late-chat")).options(t))
		if err != nil {
			t.Fatal(err)
		}
		defer c.CloseNow()
		echoOK(t, c, `{"type":"typing",`+pad+`}`) // not chat: not counted
		echoOK(t, c, late)
		echoOK(t, c, recased)
		refusedAt(t, c, late+" trailing bytes")
	})
	t.Run("compressed", func(t *testing.T) {
		c := dialCompressed(t, g, hsToken(t, secret, "late-squeezed"))
		defer c.CloseNow()
		echoOK(t, c, renamed)
		echoOK(t, c, late)
		refusedAt(t, c, renamed)
	})
	// fragments sends each message in frames, reads the echo of the first
	// two and expects the third to end the connection with 4008.
	fragments := func(t *testing.T, sub string, frames ...string) {
		t.Helper()
		rc := rawEcho(t, g, hsToken(t, secret, sub))
		defer rc.Close()
		for i := range 3 {
			for k, f := range frames {
				op := byte(0x0)
				if k == 0 {
					op = 0x1
				}
				if err := rc.writeFrame(k == len(frames)-1, op, []byte(f)); err != nil {
					t.Fatal(err)
				}
			}
			if i == 2 {
				break
			}
			var echo []byte
			for {
				f, err := rc.readFrame()
				if err != nil {
					t.Fatalf("echo %d: %v", i, err)
				}
				echo = append(echo, f.payload...)
				if f.fin {
					break
				}
			}
			if string(echo) != strings.Join(frames, "") {
				t.Fatalf("echo %d: %q", i, echo)
			}
		}
		if code, _ := rc.readCloseCode(); code != 4008 {
			t.Fatalf("the third chat message in fragments %q: close %d, want 4008", frames, code)
		}
	}
	t.Run("fragmented", func(t *testing.T) {
		// The first frame ends before the object does, and the object ends
		// before the message: the class is named again in between.
		fragments(t, "late-fragments", `{"type":"note",`, `"type":"chat"}`, ``)
	})
	t.Run("empty first fragment", func(t *testing.T) {
		fragments(t, "late-empty-first", ``, ` {"type":"chat"}`)
	})
	t.Run("object whole in a first fragment", func(t *testing.T) {
		// Go's decoder into a struct reads TYPE as type. The first bytes
		// settle the class, so the rule's drop action holds: the third is
		// dropped with the 429 frame and the connection stays.
		rc := rawEcho(t, g, hsToken(t, secret, "late-closed-first"))
		defer rc.Close()
		for i := range 3 {
			if rc.writeFrame(false, 0x1, []byte(`{"TYPE":"chat"}`)) != nil || rc.writeFrame(true, 0x0, nil) != nil {
				t.Fatal("write")
			}
			f, err := rc.readFrame()
			if err != nil || !f.fin {
				t.Fatalf("answer %d: %+v %v", i, f, err)
			}
			if i < 2 && string(f.payload) != `{"TYPE":"chat"}` {
				t.Fatalf("echo %d: %q", i, f.payload)
			}
			if i == 2 {
				ruleRefusal(t, f.payload, "chat", "user")
			}
		}
	})
	// Each client's first two chat messages and the others reached the app,
	// the third chat message of none; each connection refused past the
	// first bytes ended upstream with 4008.
	waitMetric(t, g, mRateLimited, map[string]string{"rule": "chat"}, 5)
	if got := b.msgs.Load(); got != 11 {
		t.Errorf("the backend received %d messages, want 11", got)
	}
	for range 4 {
		if c := b.nextClose(t); c.Code != 4008 {
			t.Errorf("the backend saw close %d, want 4008", c.Code)
		}
	}
}

// TestRulesDropKeepsReading: dropped messages are skipped without the
// budget of a pair that ends, however many bytes they add up to (here 1.2
// MiB, past the 1 MiB a closing pair drains), and a dropped message that
// never ends meets --message-timeout like a relayed one. The drops of one
// block are logged once.
func TestRulesDropKeepsReading(t *testing.T) {
	t.Parallel()
	secret, secretFile := newHMACSecret(t)
	b := newRecordingBackend(t)
	g, _ := rulesGate(t, b.URL, "rules: [{name: chatty, key: user, limits: [1/30s], action: drop}]\n", secretFile,
		"--message-timeout", "1s")

	c := dialAs(t, g.URL+"/echo", bearer(hsToken(t, secret, "bulky")))
	echoOK(t, c, "1")
	big := strings.Repeat("x", 100<<10)
	for i := range 12 {
		send(t, c, big)
		typ, p, err := c.Read(testCtx(t))
		if err != nil || typ != websocket.MessageText {
			t.Fatalf("drop %d: %v %v: the gate stopped reading the client", i+1, typ, err)
		}
		ruleRefusal(t, p, "chatty", "user")
	}
	if got := b.msgs.Load(); got != 1 {
		t.Errorf("the backend received %d messages, want the 1 allowed", got)
	}
	// One log line per block and connection, not one per drop.
	if n := strings.Count(g.Output(), `msg="rate limited"`); n != 1 {
		t.Errorf("%d log lines for 12 drops in one block, want 1", n)
	}

	rc := rawEcho(t, g, hsToken(t, secret, "trickler"))
	defer rc.Close()
	if err := rc.writeFrame(true, 0x1, []byte("allowed")); err != nil {
		t.Fatal(err)
	}
	if err := rc.writeFrame(false, 0x1, []byte("dropped, and never ends")); err != nil {
		t.Fatal(err)
	}
	if code, reason := rc.readCloseCode(); code != 1008 || reason != "message timeout" {
		t.Fatalf("a dropped message that never ends: close %d %q, want 1008 \"message timeout\"", code, reason)
	}
}

const shadowRules = `
rules:
  - {name: enforced, key: user, limits: [4/30s], block: 30s}
  - {name: trial, key: user, limits: [2/30s], block: 30s, shadow: true}
`

// TestRulesShadow: a shadow rule beside an enforced one that matches the
// same messages counts what it would refuse, messages and, while its block
// lasts, handshakes, and refuses nothing; the enforced rule is still
// checked and refuses on its own limit.
func TestRulesShadow(t *testing.T) {
	t.Parallel()
	secret, secretFile := newHMACSecret(t)
	b := newRecordingBackend(t)
	g, _ := rulesGate(t, b.URL, shadowRules, secretFile)
	tok := bearer(hsToken(t, secret, "trialist"))
	c := dialAs(t, g.URL+"/echo", tok)
	for _, m := range []string{"1", "2", "3"} {
		echoOK(t, c, m)
	}
	trial := map[string]string{"rule": "trial"}
	waitMetric(t, g, mRateLimited, trial, 1)
	if err := c.Close(websocket.StatusNormalClosure, ""); err != nil {
		t.Fatal(err)
	}
	// The shadow block would refuse this handshake: counted, not refused.
	c = dialAs(t, g.URL+"/echo", tok)
	waitMetric(t, g, mRateLimited, trial, 2)
	echoOK(t, c, "4")
	waitMetric(t, g, mRateLimited, trial, 3)
	// Refused by the enforced rule, the message is charged to no rule.
	send(t, c, "5")
	ruleRefusal(t, []byte(readText(t, c)), "enforced", "user")
	wantLimitClose(t, c)
	waitMetric(t, g, mRateLimited, map[string]string{"rule": "enforced"}, 1)
	waitMetric(t, g, mRateLimited, trial, 3)
	if got := b.msgs.Load(); got != 4 {
		t.Errorf("the backend received %d messages, want the 4 the enforced rule allows", got)
	}
}

const reloadRules = `
rules:
  - {name: user-messages, key: user, limits: [%s], block: 30s}
`

// TestRulesReload: a new file reaches open connections at their next
// message, keeping the counters of an unchanged rule; an invalid file keeps
// the rules in force; a reload that denies a connected subject closes its
// connection with 1008.
func TestRulesReload(t *testing.T) {
	t.Parallel()
	secret, secretFile := newHMACSecret(t)
	b := newRecordingBackend(t)
	g, file := rulesGate(t, b.URL, strings.Replace(reloadRules, "%s", "3/30s", 1), secretFile)
	write := func(s string) {
		tmp := file + ".tmp"
		if err := os.WriteFile(tmp, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, file); err != nil {
			t.Fatal(err)
		}
		if err := g.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
	}
	c := dialAs(t, g.URL+"/echo", bearer(hsToken(t, secret, "reloader")))
	other := dialAs(t, g.URL+"/echo", bearer(hsToken(t, secret, "mallory")))
	echoOK(t, c, "1")
	echoOK(t, c, "2")

	write(strings.Replace(reloadRules, "%s", "5/30s", 1))
	waitMetric(t, g, mRulesReloads, map[string]string{"result": "ok"}, 1)
	// The same connection, no reconnect: 2 counted under the old limit, 3
	// more under the new one.
	echoOK(t, c, "3")
	echoOK(t, c, "4")
	echoOK(t, c, "5")

	write("rules: [{name: user-messages, limits: [lots]}]\n")
	waitMetric(t, g, mRulesReloads, map[string]string{"result": "error"}, 1)
	if !strings.Contains(g.Output(), "rules.yaml:1:") {
		t.Errorf("the reload error does not name the line:\n%s", tail(g.Output(), 2000))
	}
	send(t, c, "6")
	ruleRefusal(t, []byte(readText(t, c)), "user-messages", "user")
	wantLimitClose(t, c)

	write(strings.Replace(reloadRules, "%s", "5/30s", 1) + "deny: {subjects: [mallory]}\n")
	waitMetric(t, g, mRulesReloads, map[string]string{"result": "ok"}, 2)
	if ce := readClose(t, other); ce.Code != 1008 || ce.Reason != "denied" {
		t.Fatalf("a connected subject denied by a reload got %d %q, want 1008 \"denied\"", ce.Code, ce.Reason)
	}
}

// TestRulesSharedInRedis: two gates with one rules file on one Redis share
// a rule's budget and its block; a byte rule counts payload bytes.
func TestRulesSharedInRedis(t *testing.T) {
	t.Parallel()
	rs := startRedisServer(t)
	secret, secretFile := newHMACSecret(t)
	b := newRecordingBackend(t)
	rules := `
rules:
  - {name: user-messages, key: user, limits: [4/30s, 100/1m], block: 30s}
  - {name: ip-bytes, key: ip, count: bytes, limits: [1KiB/30s]}
`
	g1, _ := rulesGate(t, b.URL, rules, secretFile, redisURL(rs)...)
	g2, _ := rulesGate(t, b.URL, rules, secretFile, redisURL(rs)...)
	tok := bearer(hsToken(t, secret, "shared"))
	c1 := dialAs(t, g1.URL+"/echo", tok)
	c2 := dialAs(t, g2.URL+"/echo", tok)
	echoOK(t, c1, "1")
	echoOK(t, c2, "2")
	echoOK(t, c1, "3")
	echoOK(t, c2, "4")
	send(t, c1, "5")
	ruleRefusal(t, []byte(readText(t, c1)), "user-messages", "user")
	wantLimitClose(t, c1)
	// Blocked on the other gate too, handshakes included.
	send(t, c2, "6")
	ruleRefusal(t, []byte(readText(t, c2)), "user-messages", "user")
	wantLimitClose(t, c2)
	c3, _, err := tryDial(t, g2.URL+"/echo", tok)
	if err != nil {
		t.Fatal(err)
	}
	ruleRefusal(t, []byte(readText(t, c3)), "user-messages", "user")

	// 1 KiB per IP: two messages of 400 bytes pass, the third does not.
	big := dialAs(t, g1.URL+"/echo", bearer(hsToken(t, secret, "bytes")).from("127.0.0.7"))
	payload := strings.Repeat("x", 400)
	echoOK(t, big, payload)
	echoOK(t, dialAs(t, g2.URL+"/echo", bearer(hsToken(t, secret, "bytes2")).from("127.0.0.7")), payload)
	send(t, big, payload)
	ruleRefusal(t, []byte(readText(t, big)), "ip-bytes", "ip")
}

// TestRulesConfig: rule flags beside a rules file, and a bad file, are
// refused at start with a line that names them; wsgate rules check says
// where each problem is.
func TestRulesConfig(t *testing.T) {
	t.Parallel()
	good := writeTestFile(t, "good.yaml", []byte(dropRules))
	bad := writeTestFile(t, "bad.yaml", []byte("rules:\n  - {name: a, limts: [1/s]}\n"))
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"check-config", "--upstream", "http://127.0.0.1:1", "--rules-file", good, "--user-rate", "5/1s"}, "--rules-file: --user-rate is a rule flag"},
		{[]string{"check-config", "--upstream", "http://127.0.0.1:1", "--rules-file", bad}, `bad.yaml:2:15: a rule: unknown field "limts" (did you mean "limits"?)`},
		{[]string{"rules", "check", good, bad}, `bad.yaml:2:5: rule "a" needs limits`},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		out, err := exec.CommandContext(ctx, gateBin, tc.args...).CombinedOutput()
		cancel()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 2 || !strings.Contains(string(out), tc.want) {
			t.Errorf("wsgate %s: %v\n%s\nwant exit 2 and %q", strings.Join(tc.args, " "), err, out, tc.want)
		}
	}
	out, err := exec.Command(gateBin, "check-config", "--upstream", "http://127.0.0.1:1", "--rules-file", good).CombinedOutput()
	if err != nil {
		t.Errorf("check-config with a good rules file: %v\n%s", err, out)
	}
	out, err = exec.Command(gateBin, "rules", "check", good).CombinedOutput()
	if err != nil || !strings.Contains(string(out), filepath.Base(good)+": 0 classes, 0 tiers, 1 rules, sha256 ") {
		t.Errorf("rules check of a good file: %v\n%s", err, out)
	}
}

const classRules = `
classes:
  - {name: chat,   socketio-event: chat}
  - {name: typing, socketio-event: typing, unlimited: true}
rules:
  - {name: user-messages, key: user, limits: [8/30s], block: 30s}
  - {name: chat, class: chat, key: user, limits: [3/30s], action: drop}
`

// TestRulesSocketIOClasses: a socket.io app's events are classified by
// name: typing indicators (an unlimited class) never count, chat events
// have their own budget, and a chat event over it is dropped with the
// wsgate:limited event naming the rule while the socket stays up, on
// websocket and on polling (where the event comes with the upstream's next
// answer to the session's long poll).
func TestRulesSocketIOClasses(t *testing.T) {
	t.Parallel()
	backend := startNodeBackend(t)
	secret, secretFile := newHMACSecret(t)
	for _, tr := range sioTransports[:2] {
		t.Run(tr.name, func(t *testing.T) {
			t.Parallel()
			g, _ := rulesGate(t, backend, classRules, secretFile)
			events := sioApp(t, map[string]any{"url": g.HTTP, "transports": tr.transports, "scenario": "classes",
				"count": 20, "token": hsToken(t, secret, "sio-"+tr.name), "tokenForm": "query"})
			ev := only(t, events, "limited")
			lim, _ := ev["limited"].(map[string]any)
			if lim["rule"] != "chat" || lim["code"] != float64(429) {
				t.Fatalf("the refusal event %v, want rule chat (events %v)", ev, events)
			}
			// 20 typing events did not count: every chat from the 4th on is refused
			// (the client sends chats until the first refusal event reaches it), and
			// the socket stays up and answers.
			chats, _ := ev["chats"].(float64)
			if chats < 4 || ev["echo"] != "after the refusal" || ev["connected"] != true {
				t.Fatalf("after a dropped chat event the socket should stay up and answer: %v", ev)
			}
			waitMetric(t, g, mRateLimited, map[string]string{"rule": "chat"}, chats-3)
			waitMetric(t, g, mRateLimited, map[string]string{"rule": "user-messages"}, 0)

			// Five chats after 20 typing events: the 4th and 5th are dropped, and the
			// session goes on (the echo is acked). A drop's event waits for the next
			// message boundary (websocket) or answer to the long poll (polling), and a
			// later drop's replaces one not sent yet: one or two events.
			before := g.Metric(t, mRateLimited, map[string]string{"rule": "chat"})
			events = sioApp(t, map[string]any{"url": g.HTTP, "transports": tr.transports, "scenario": "drops",
				"count": 20, "token": hsToken(t, secret, "sio-drops-"+tr.name), "tokenForm": "query"})
			ev = only(t, events, "limited")
			refusals, _ := ev["limited"].([]any)
			if len(refusals) < 1 || len(refusals) > 2 || ev["echo"] != "after the drops" || ev["connected"] != true {
				t.Fatalf("want the refusal events, the echo acked and the session up: %v", ev)
			}
			waitMetric(t, g, mRateLimited, map[string]string{"rule": "chat"}, before+2)
			for _, r := range refusals {
				if m, _ := r.(map[string]any); m["rule"] != "chat" {
					t.Fatalf("refusal %v, want rule chat", r)
				}
			}
		})
	}
}

// TestRulesSocketIOEventPastTheHead: a socket.io event whose name comes
// after the first 512 bytes (socket.io-parser takes any run of digits into
// the ack id) is charged to its class before the packet's last frame goes
// upstream; over the class's budget the connection ends with the refusal
// event and 4008, and the app never gets the packet.
func TestRulesSocketIOEventPastTheHead(t *testing.T) {
	t.Parallel()
	secret, secretFile := newHMACSecret(t)
	b := newRecordingBackend(t)
	g, _ := rulesGate(t, b.URL, classRules, secretFile)
	c, _, err := websocket.Dial(testCtx(t), g.URL+"/socket.io/?EIO=4&transport=websocket",
		bearer(hsToken(t, secret, "sio-late")).options(t))
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseNow()
	chat := `42` + strings.Repeat("0", 600) + `["chat","hi"]`
	echoOK(t, c, `42`+strings.Repeat(" ", 600)+`["typing"]`) // unlimited, past the head too
	for range 3 {
		echoOK(t, c, chat)
	}
	send(t, c, chat)
	if ev := readText(t, c); !strings.HasPrefix(ev, `42["wsgate:limited",`) || !strings.Contains(ev, `"rule":"chat"`) {
		t.Fatalf("want the refusal event of rule chat, got %q", ev)
	}
	if _, _, err := c.Read(testCtx(t)); websocket.CloseStatus(err) != 4008 {
		t.Fatalf("after the refusal: %v, want close 4008", err)
	}
	if got := b.msgs.Load(); got != 4 {
		t.Errorf("the backend received %d messages, want 4", got)
	}
	if cl := b.nextClose(t); cl.Code != 4008 {
		t.Errorf("the backend saw close %d, want 4008", cl.Code)
	}
}

// TestDemoRules: `make demo-rules` runs the demo under docs/rules.example.yaml:
// a fourth "!" message in 10 s is dropped with the 429 frame naming the
// rule, and the socket goes on echoing.
func TestDemoRules(t *testing.T) {
	t.Parallel()
	listen, p := startDemo(t, "text", "--rules-file", filepath.Join("..", "docs", "rules.example.yaml"))
	var c *websocket.Conn
	waitFor(t, "the demo's WebSocket", func() bool {
		if p.exited() {
			t.Fatalf("wsgate demo exited:\n%s", p.out.String())
		}
		var err error
		c, _, err = websocket.Dial(testCtx(t), "ws://"+listen+"/ws", nil)
		return err == nil
	})
	defer c.CloseNow()
	for _, m := range []string{"!one", "!two", "!three"} {
		echoOK(t, c, m)
	}
	send(t, c, "!four")
	ruleRefusal(t, []byte(readText(t, c)), "shouts", "user")
	echoOK(t, c, "a plain message still passes")
}

// TestRulesExamplesParse: every rules file of the README's Rules file
// section (the reference and the worked examples) and
// docs/rules.example.yaml pass `wsgate rules check`.
func TestRulesExamplesParse(t *testing.T) {
	t.Parallel()
	readme, err := os.ReadFile(filepath.Join("..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(readme), "### Rules file")
	section, _, ok2 := strings.Cut(rest, "\n### ")
	if !ok || !ok2 {
		t.Fatal("no Rules file section in the README")
	}
	files := []string{filepath.Join("..", "docs", "rules.example.yaml")}
	for i, block := range strings.Split(section, "```yaml\n")[1:] {
		block, _, ok := strings.Cut(block, "```")
		if !ok {
			t.Fatalf("yaml block %d of the Rules file section does not end", i+1)
		}
		files = append(files, writeTestFile(t, fmt.Sprintf("readme-%d.yaml", i+1), []byte(block)))
	}
	if len(files) < 7 {
		t.Fatalf("%d rules files in the README's Rules file section, want the reference and 5 worked examples", len(files)-1)
	}
	if out, err := exec.Command(gateBin, append([]string{"rules", "check"}, files...)...).CombinedOutput(); err != nil {
		t.Fatalf("rules check: %v\n%s", err, out)
	}
}

const nodeClientRules = `
classes:
  - {name: shout, prefix: "!"}
rules:
  - {name: shouts, class: shout, key: user, limits: [2/30s], action: drop}
  - {name: user-messages, key: user, limits: [5/30s], block: 30s}
`

// TestRulesNodeClient: a Node ws client sends its messages at once; a drop
// rule's refusal leaves the socket up (the message is not relayed and not
// counted by the other rules), and the close rule then ends it with the 429
// frame naming it and 4008, after the echoes of every message it allowed.
func TestRulesNodeClient(t *testing.T) {
	t.Parallel()
	secret, secretFile := newHMACSecret(t)
	g, _ := rulesGate(t, startNodeBackend(t), nodeClientRules, secretFile)
	args := []string{"--header", "Authorization:Bearer " + hsToken(t, secret, "node-ws")}
	for _, m := range []string{"!1", "!2", "!3", "a", "b", "c", "d"} {
		args = append(args, "--send", m)
	}
	events := runNodeClient(t, append([]string{g.URL + "/echo"}, args...)...)
	var echoes []string
	refusals := map[string]int{}
	var closeCode float64
	for _, ev := range events {
		switch {
		case ev["message"] != nil:
			m, _ := ev["message"].(string)
			if strings.HasPrefix(m, "{") {
				var r struct{ Rule string }
				if json.Unmarshal([]byte(m), &r) != nil {
					t.Fatalf("message %q", m)
				}
				ruleRefusal(t, []byte(m), r.Rule, "user")
				refusals[r.Rule]++
				continue
			}
			echoes = append(echoes, m)
		case ev["close"] != nil:
			closeCode, _ = ev["close"].(float64)
		}
	}
	// !3 is dropped and not counted: a, b and c are the 3rd to 5th messages, d the 6th.
	if strings.Join(echoes, " ") != "!1 !2 a b c" || refusals["shouts"] != 1 || refusals["user-messages"] != 1 || closeCode != 4008 {
		t.Fatalf("echoes %q, refusals %v, close %v; want !1 !2 a b c, one of each rule, 4008 (events %v)",
			echoes, refusals, closeCode, events)
	}
}
