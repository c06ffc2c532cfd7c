package proxy

import (
	"bytes"
	"compress/flate"
	"encoding/hex"
	"io"
	"net/http"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsflate"

	"github.com/holo/wsgate/frames"
)

// eioControl is every engine.io 4 packet that carries nothing for the app,
// written out independently of isControlPacket: it is the tests' oracle.
var eioControl = map[string]bool{
	"1": true, "2": true, "3": true, "5": true, "6": true,
	"2probe": true, "3probe": true,
}

// clientFrames returns the payloads as masked client frames, text unless
// the payload starts with "bin:" (binary, the prefix removed).
func clientFrames(t testing.TB, payloads ...string) []byte {
	t.Helper()
	var b bytes.Buffer
	for _, p := range payloads {
		f := ws.NewTextFrame([]byte(p))
		if rest, ok := strings.CutPrefix(p, "bin:"); ok {
			f = ws.NewBinaryFrame([]byte(rest))
		}
		if err := ws.WriteFrame(&b, ws.MaskFrame(f)); err != nil {
			t.Fatal(err)
		}
	}
	return b.Bytes()
}

func TestIsControlPacket(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		pkt  string
		want bool
	}{
		{"1", true}, {"2", true}, {"3", true}, {"5", true}, {"6", true},
		{"2probe", true}, {"3probe", true},
		{"", false},
		{"0", false},  // open: the server's
		{"4", false},  // an empty message is still a message
		{"40", false}, // socket.io CONNECT
		{`42["chat","hi"]`, false},
		{"2pong", false},  // a ping with data is not a probe
		{"4probe", false}, // a message whose text is "probe"
		{"3probes", false},
		{"bAQID", false}, // a base64 binary message
	} {
		if got := isControlPacket([]byte(tc.pkt)); got != tc.want {
			t.Errorf("isControlPacket(%q) = %v, want %v", tc.pkt, got, tc.want)
		}
	}
}

// countSocketIOTests are the frame sequences of TestCountSocketIOMessages
// and the seeds of FuzzCountSocketIOMessages.
var countSocketIOTests = []struct {
	name     string
	payloads []string
	want     int
}{
	{"none", nil, 0},
	{"one event", []string{`42["chat","a"]`}, 1},
	{"pongs between events", []string{"3", `42["chat","a"]`, "3", `42["chat","b"]`, "3"}, 2},
	{"only control", []string{"2", "3", "6", "5", "2probe", "3probe"}, 0},
	{"binary frames count", []string{`451-["up",{"_placeholder":true,"num":0}]`, "bin:\x01\x02"}, 2},
	{"a binary frame that reads like a pong", []string{"bin:3"}, 1},
	{"an empty message counts", []string{"4"}, 1},
}

func TestCountSocketIOMessages(t *testing.T) {
	t.Parallel()
	for _, tc := range countSocketIOTests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			p := clientFrames(t, tc.payloads...)
			if got := countSocketIOMessages(p, 100); got != tc.want {
				t.Errorf("countSocketIOMessages = %d, want %d", got, tc.want)
			}
			if tc.want > 0 {
				if got := countSocketIOMessages(p, tc.want-1); got != tc.want-1 {
					t.Errorf("countSocketIOMessages with limit %d = %d", tc.want-1, got)
				}
			}
		})
	}

	t.Run("stops at a close frame", func(t *testing.T) {
		t.Parallel()
		var b bytes.Buffer
		b.Write(clientFrames(t, `42["a"]`))
		if err := ws.WriteFrame(&b, ws.MaskFrame(ws.NewCloseFrame(ws.NewCloseFrameBody(ws.StatusNormalClosure, "")))); err != nil {
			t.Fatal(err)
		}
		b.Write(clientFrames(t, `42["b"]`))
		if got := countSocketIOMessages(b.Bytes(), 100); got != 1 {
			t.Errorf("countSocketIOMessages = %d, want 1 (nothing after the close)", got)
		}
	})

	t.Run("a pong whose payload is not buffered yet counts", func(t *testing.T) {
		t.Parallel()
		// Its bytes may still turn out to be anything: it counts, as any
		// data message does, rather than pass unseen.
		p := clientFrames(t, "3probe")
		if got := countSocketIOMessages(p[:len(p)-2], 100); got != 1 {
			t.Errorf("countSocketIOMessages = %d, want 1", got)
		}
	})

	t.Run("a header cut short is not counted", func(t *testing.T) {
		t.Parallel()
		p := clientFrames(t, `42["a"]`, `42["b"]`)
		if got := countSocketIOMessages(p[:len(p)/2+3], 100); got != 1 {
			t.Errorf("countSocketIOMessages = %d, want 1", got)
		}
	})
}

// FuzzCountSocketIOMessages checks the look-ahead counter against frames
// built from the fuzzed payloads (split at 0x1e) and against
// frames.CountMessages on arbitrary bytes: it never counts a frame that
// frames.CountMessages would not, and a limit only cuts its count.
func FuzzCountSocketIOMessages(f *testing.F) {
	for _, tc := range countSocketIOTests {
		f.Add(strings.Join(tc.payloads, "\x1e"), clientFrames(f, tc.payloads...))
	}
	f.Fuzz(func(t *testing.T, joined string, raw []byte) {
		payloads := strings.Split(joined, "\x1e")
		want := 0
		for _, p := range payloads {
			if !eioControl[p] {
				want++
			}
		}
		if got := countSocketIOMessages(clientFrames(t, payloads...), len(payloads)+1); got != want {
			t.Fatalf("countSocketIOMessages(%q) = %d, want %d", payloads, got, want)
		}

		all := countSocketIOMessages(raw, 1<<20)
		if plain := frames.CountMessages(raw, 1<<20); all > plain {
			t.Fatalf("countSocketIOMessages = %d > frames.CountMessages = %d on %x", all, plain, raw)
		}
		for _, limit := range []int{0, 1, 2, 7} {
			if got := countSocketIOMessages(raw, limit); got != min(all, limit) {
				t.Fatalf("countSocketIOMessages(limit %d) = %d, want %d on %x", limit, got, min(all, limit), raw)
			}
		}
	})
}

// TestCountSocketIOMessagesAllocs: the look-ahead count sits on the
// per-frame path of every engine.io connection.
func TestCountSocketIOMessagesAllocs(t *testing.T) {
	p := clientFrames(t, "3", `42["chat","a"]`, "2probe", `42["chat","b"]`)
	var h ws.Header
	if err := func() (err error) { h, err = ws.ReadHeader(bytes.NewReader(p)); return err }(); err != nil {
		t.Fatal(err)
	}
	n := testing.AllocsPerRun(1000, func() {
		if countSocketIOMessages(p, 100) != 2 || !controlFrame(h, p[6:]) {
			t.Fatal("wrong count")
		}
	})
	if n != 0 {
		t.Errorf("%v allocations per call, want 0", n)
	}
}

// TestFreeControl: a connection's control packets pass without counting,
// up to sioFreeControl per sioFreeWindow; the ones past it count, so that a
// flood of pongs is not a way around the message rules.
func TestFreeControl(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		pong := clientFrames(t, "3")
		data := clientFrames(t, `42["chat"]`)
		header := func(p []byte) ws.Header {
			h, err := ws.ReadHeader(bytes.NewReader(p))
			if err != nil {
				t.Fatal(err)
			}
			return h
		}
		hp, hd := header(pong), header(data)
		var c connInfo
		if c.freeControl(hd, data[6:]) {
			t.Fatal("a data message passed as a control packet")
		}
		for i := range sioFreeControl {
			if !c.freeControl(hp, pong[6:]) {
				t.Fatalf("pong %d of the window counted, want free up to %d", i+1, sioFreeControl)
			}
		}
		if c.freeControl(hp, pong[6:]) {
			t.Fatalf("pong %d of the window passed free", sioFreeControl+1)
		}
		time.Sleep(sioFreeWindow)
		if !c.freeControl(hp, pong[6:]) {
			t.Fatal("the first pong of a new window counted")
		}
	})
}

// pollingTests are polling payloads (packets joined by 0x1e) and how many
// of their packets count; the seeds of FuzzPollingPayload.
var pollingTests = []struct {
	body string
	want int
}{
	{"", 0},
	{"3", 0},
	{`42["chat","a"]`, 1},
	{"3\x1e42[\"a\"]\x1e42[\"b\"]", 2},
	{"42[\"a\"]\x1e6\x1e42[\"b\"]\x1e1", 2},
	{"\x1e\x1e", 0},
	{"bAQID\x1e451-[\"up\",{\"_placeholder\":true,\"num\":0}]", 2},
	{"40/admin,\x1e42/admin,[\"a\"]", 2},
}

func TestCountPackets(t *testing.T) {
	t.Parallel()
	for _, tc := range pollingTests {
		if got := countPackets([]byte(tc.body)); got != tc.want {
			t.Errorf("countPackets(%q) = %d, want %d", tc.body, got, tc.want)
		}
	}
}

func TestCutAfter(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		body   string
		k      int
		prefix string
		next   string
	}{
		{`42["a"]`, 0, "", `42["a"]`},
		{`42["a"]`, 1, `42["a"]`, ""},
		{"3\x1e42[\"a\"]\x1e42[\"b\"]", 0, "3", `42["a"]`},
		{"3\x1e42[\"a\"]\x1e42[\"b\"]", 1, "3\x1e42[\"a\"]", `42["b"]`},
		{"42[\"a\"]\x1e6\x1e42/chat,[\"b\"]", 1, "42[\"a\"]\x1e6", `42/chat,["b"]`},
	} {
		prefix, next := cutAfter([]byte(tc.body), tc.k)
		if tc.body[:prefix] != tc.prefix || string(next) != tc.next {
			t.Errorf("cutAfter(%q, %d) = %q, %q; want %q, %q", tc.body, tc.k, tc.body[:prefix], next, tc.prefix, tc.next)
		}
	}
}

// FuzzPollingPayload checks countPackets and cutAfter against a split of
// the payload at 0x1e: the count is of the non-empty packets that are not
// control packets, and cutting after k of them leaves a payload that holds
// exactly k, followed by the (k+1)th.
func FuzzPollingPayload(f *testing.F) {
	for _, tc := range pollingTests {
		f.Add(tc.body)
	}
	f.Fuzz(func(t *testing.T, body string) {
		var counted []string
		for _, p := range strings.Split(body, "\x1e") {
			if p != "" && !eioControl[p] {
				counted = append(counted, p)
			}
		}
		if got := countPackets([]byte(body)); got != len(counted) {
			t.Fatalf("countPackets(%q) = %d, want %d", body, got, len(counted))
		}
		for k := 0; k <= len(counted); k++ {
			prefix, next := cutAfter([]byte(body), k)
			cut := body[:prefix]
			if strings.HasSuffix(cut, "\x1e") {
				t.Fatalf("cutAfter(%q, %d): %q ends with a separator", body, k, cut)
			}
			if got := countPackets([]byte(cut)); got != k {
				t.Fatalf("cutAfter(%q, %d): %q holds %d counted packets", body, k, cut, got)
			}
			want := ""
			if k < len(counted) {
				want = counted[k]
			}
			if string(next) != want {
				t.Fatalf("cutAfter(%q, %d): next %q, want %q", body, k, next, want)
			}
		}
	})
}

func TestNamespace(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		pkt  string
		want string
	}{
		{`42["chat"]`, ""},
		{`42/admin,["chat"]`, "/admin"},
		{`421/admin,["chat"]`, ""}, // an ack id comes after the namespace, never before
		{`40/admin,`, "/admin"},
		{`40/admin`, "/admin"},
		{`451-/up,["f",{"_placeholder":true,"num":0}]`, "/up"},
		{`451-["f",{"_placeholder":true,"num":0}]`, ""},
		{`42/,["chat"]`, ""}, // "/" is the main namespace
		{`42/a"b,["chat"]`, ""},
		{`42/a b,["chat"]`, ""},
		{"42/" + strings.Repeat("n", maxNamespace) + `,["chat"]`, ""},
		{"42/" + strings.Repeat("n", maxNamespace-1) + `,["chat"]`, "/" + strings.Repeat("n", maxNamespace-1)},
		{`3`, ""},
		{`bAQID`, ""},
	} {
		if got := namespace([]byte(tc.pkt)); got != tc.want {
			t.Errorf("namespace(%q) = %q, want %q", tc.pkt, got, tc.want)
		}
	}
}

// TestAttachments: the client packets a drop would tear from their
// attachments are recognised, and the count of attachments the upstream
// owes follows its BINARY_EVENT and BINARY_ACK packets.
func TestAttachments(t *testing.T) {
	t.Parallel()
	header := func(p []byte) (ws.Header, []byte) {
		r := bytes.NewReader(p)
		h, err := ws.ReadHeader(r)
		if err != nil {
			t.Fatal(err)
		}
		return h, p[len(p)-r.Len():]
	}
	for p, want := range map[string]bool{
		`42["chat","hi"]`: false,
		`451-["chat",{"_placeholder":true,"num":0}]`:  true,
		`461-/admin,7[{"_placeholder":true,"num":0}]`: true,
		"bin:\x01\x02":     true,
		"4":                false,
		`43/admin,7["ok"]`: false,
		`40`:               false,
	} {
		h, buf := header(clientFrames(t, p))
		if got := withAttachments(h, buf); got != want {
			t.Errorf("withAttachments(%q) = %v, want %v", p, got, want)
		}
	}

	var n int32
	for _, step := range []struct {
		payload string
		binary  bool
		want    int32
	}{
		{`42["news"]`, false, 0},
		{`452-["up",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]`, false, 2},
		{"\x01", true, 1},
		{"\x02", true, 0},
		{"\x03", true, 0},
		{`4612-/a,1[]`, false, 12},
		{`42["a text packet resets a broken count"]`, false, 0},
		{`45x-[]`, false, 0},
		{`451`, false, 0},
	} {
		f := ws.NewTextFrame([]byte(step.payload))
		if step.binary {
			f = ws.NewBinaryFrame([]byte(step.payload))
		}
		var b bytes.Buffer
		if err := ws.WriteFrame(&b, f); err != nil {
			t.Fatal(err)
		}
		h, buf := header(b.Bytes())
		if n = pendingAttachments(h, buf, n); n != step.want {
			t.Fatalf("after %q: %d attachments owed, want %d", step.payload, n, step.want)
		}
	}
}

// TestInflateHead: the first bytes of a compressed message inflate on their
// own, whole or cut anywhere, without allocating.
func TestInflateHead(t *testing.T) {
	msg := []byte(`42["chat:send",{"text":"` + strings.Repeat("hello, ", 200) + `"}]`)
	var b bytes.Buffer
	fw, err := flate.NewWriter(&b, flate.BestSpeed)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := fw.Write(msg); err != nil {
		t.Fatal(err)
	}
	if err := fw.Flush(); err != nil {
		t.Fatal(err)
	}
	deflated := b.Bytes()
	var out [classifyBytes]byte
	if n, whole := inflateHead(deflated, out[:], false); !bytes.Equal(out[:n], msg[:classifyBytes]) || whole {
		t.Fatalf("a whole message's head inflated to %q (whole %v)", out[:n], whole)
	}
	for cut := range len(deflated) {
		n, whole := inflateHead(deflated[:cut], out[:], false)
		if !bytes.HasPrefix(msg, out[:n]) || whole {
			t.Fatalf("cut at %d: inflated %q (whole %v), not a prefix of the message", cut, out[:n], whole)
		}
	}
	if raceEnabled {
		return
	}
	if a := testing.AllocsPerRun(100, func() { inflateHead(deflated, out[:], true) }); a != 0 {
		t.Errorf("inflateHead allocates %v times", a)
	}
}

// TestInflateHeadWhole: a compressed message whose data the first bytes
// hold whole inflates to what the relay sends (wsflate's reader, which
// adds the tail the sender removed), even when the client's last block
// does not end, so that the tail's bits decode as more of it. The
// classifier must see those bytes: here the '}' that completes a chat
// message (found by an independent review).
func TestInflateHeadWhole(t *testing.T) {
	unended, err := hex.DecodeString("05e0019024499224498639000080048002000000000000000050444444444444444444444444444444444444444444444444" +
		"4444444444444444444444444444444444444444440447444444444444444444444444444444440000000000000000000000" +
		"0000000000000000000000000000000000000000000000000000000000000000000000406626da56e0f2c6fc486066e0d0f8" +
		"c072a0")
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	fw, _ := flate.NewWriter(&b, flate.BestSpeed)
	fw.Write([]byte(`{"type":"chat","text":"hello"}`))
	fw.Flush()
	plain := bytes.TrimSuffix(b.Bytes(), []byte{0, 0, 0xff, 0xff})
	for _, data := range [][]byte{unended, plain, {0}} { // {0}: an empty message
		// Read as inflate reads a message (messageReader has no ReadByte).
		src := struct{ io.Reader }{bytes.NewReader(data)}
		relayed, err := io.ReadAll(wsflate.NewReader(src, func(r io.Reader) wsflate.Decompressor { return flate.NewReader(r) }))
		if err != nil {
			t.Fatalf("%x: the relay's inflater: %v", data, err)
		}
		var out [classifyBytes]byte
		n, whole := inflateHead(data, out[:], true)
		if !whole || !bytes.Equal(out[:n], relayed) {
			t.Errorf("%x: inflated %q (whole %v), the relay sends %q", data, out[:n], whole, relayed)
		}
	}
}

// TestAddPollNotice: the refusal event of a dropped packet goes after the
// upstream's packets of the next GET's answer, before its close if it sent
// one, once; a later drop's replaces one not sent.
func TestAddPollNotice(t *testing.T) {
	p := &Proxy{web: web{drops: newPollDrops()}}
	sep := string(rune(eioSep))
	for _, tc := range []struct{ upstream, want string }{
		{"", "N2"},
		{"42[\"a\"]", "42[\"a\"]" + sep + "N2"},
		{"1", "N2" + sep + "1"},
		{"42[\"a\"]" + sep + "1", "42[\"a\"]" + sep + "N2" + sep + "1"},
	} {
		p.web.drops.notify("s", "ip", []byte("N1"))
		p.web.drops.notify("s", "ip", []byte("N2"))
		res := &http.Response{StatusCode: http.StatusOK, Header: http.Header{}, Body: io.NopCloser(strings.NewReader(tc.upstream))}
		if err := p.addPollNotice(res, "s"); err != nil {
			t.Fatal(err)
		}
		got, _ := io.ReadAll(res.Body)
		if string(got) != tc.want || res.ContentLength != int64(len(tc.want)) {
			t.Errorf("upstream %q: got %q, want %q", tc.upstream, got, tc.want)
		}
		res = &http.Response{StatusCode: http.StatusOK, Header: http.Header{}, Body: io.NopCloser(strings.NewReader("x"))}
		if err := p.addPollNotice(res, "s"); err != nil {
			t.Fatal(err)
		}
		if got, _ := io.ReadAll(res.Body); string(got) != "x" {
			t.Errorf("the notices were added twice: %q", got)
		}
	}
}
