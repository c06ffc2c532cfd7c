//go:build e2e

package e2e

// The RFC 6455 conformance suite: an Autobahn|Testsuite
// equivalent in Go, run against the built gate in front of frameRecorder. Frames are crafted by
// the test-only encoder of rawframe_test.go and written whole or in chops of 1 and 997 bytes.
// Every case asserts the close code the client receives, that the backend received nothing
// invalid (its whole recorded stream is checked against RFC 6455, and the data frames that
// reached it are listed exactly), and that the gate is still running and serving a neighbour
// connection and a fresh one afterwards. Client faults also assert that a ping sent after the
// fatal frame gets no pong and never reaches the backend, and that the backend is told 1001;
// upstream faults assert client 1014 and backend 1002, 1007 for UTF-8, 1009 for size (README, "What clients see").

import (
	"bytes"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unicode"
)

// cfWait bounds each wait for a frame of the suite; generous for a loaded 2-core machine.
const cfWait = 5 * time.Second

// cfAfterFatal is the payload of the ping sent right after a fatal frame.
const cfAfterFatal = "ping-after-fatal"

type cfGate struct {
	name string
	g    *Gate
	host string // host:port of the client listener

	nbMu sync.Mutex
	nb   *cfClient // a connection that lives through the whole suite
	nbN  int
}

type cfEnv struct {
	rec        *frameRecorder
	big, small *cfGate
	seq        atomic.Int64
}

func TestConformance(t *testing.T) {
	rec := newFrameRecorder(t)
	e := &cfEnv{rec: rec}
	start := func(name, max string) *cfGate {
		g := startGate(t, append(append([]string{}, noLimits...),
			"--upstream", rec.URL, "--max-message-bytes", max, "--ping-interval", "0")...)
		cg := &cfGate{name: name, g: g, host: strings.TrimPrefix(g.URL, "ws://")}
		cg.nb, _ = e.open(t, cg, "neighbour-"+name, "")
		return cg
	}
	e.big = start("1MiB", "1MiB")
	e.small = start("4KiB", "4KiB")

	groups := []struct {
		name  string
		cases []cfCase
	}{
		{"unmasked", cfUnmaskedCases()},
		{"reserved-bits", cfReservedBitsCases()},
		{"reserved-opcodes", cfReservedOpcodeCases()},
		{"bad-control", cfBadControlCases()},
		{"ping-pong", cfPingCases()},
		{"fragments", cfFragmentCases()},
		{"utf8", cfUTF8Cases()},
		{"close-codes", cfCloseCases()},
		{"lengths", cfLengthCases()},
		{"max-message", cfMaxMessageCases()},
		{"upstream", cfUpstreamCases()},
		{"fault-close-handshake", cfFaultHandshakeCases()},
	}
	for _, grp := range groups {
		t.Run(grp.name, func(t *testing.T) {
			for _, c := range grp.cases {
				t.Run(c.name, func(t *testing.T) {
					t.Parallel()
					c.run(t, e)
				})
			}
		})
	}
	for _, cg := range []*cfGate{e.big, e.small} {
		e.healthy(t, cg)
	}
}

type cfCase struct {
	name string
	run  func(t *testing.T, e *cfEnv)
}

// open dials the gate with a fresh recorder id (or the given one) and waits for the upstream
// connection the gate opened for it.
func (e *cfEnv) open(t testing.TB, cg *cfGate, id, bad string) (*cfClient, *recordedConn) {
	t.Helper()
	if id == "" {
		id = strings.Map(func(r rune) rune {
			if r < unicode.MaxASCII && (unicode.IsLetter(r) || unicode.IsDigit(r)) || r == '-' {
				return r
			}
			return '_'
		}, t.Name()) + fmt.Sprintf("-%d", e.seq.Add(1))
	}
	path := "/cf/" + id
	if bad != "" {
		path += "?bad=" + bad
	}
	c := cfDial(t, cg.host, path)
	return c, e.rec.conn(t, id)
}

// healthy asserts that the gate process runs and relays: the suite-long neighbour connection
// and a fresh connection both get an echo.
func (e *cfEnv) healthy(t testing.TB, cg *cfGate) {
	t.Helper()
	if cg.g.proc.exited() {
		t.Fatalf("the %s gate exited (%v):\n%s", cg.name, cg.g.Cmd.ProcessState, tail(cg.g.Output(), 8<<10))
	}
	cg.nbMu.Lock()
	cg.nbN++
	msg := fmt.Sprintf("neighbour echo %d", cg.nbN)
	err := cg.nb.send(0, cfMsg(cfOpText, msg))
	var got []cfMessage
	if err == nil {
		got, err = cg.nb.readMessages(1, cfWait)
	}
	cg.nbMu.Unlock()
	if err != nil || len(got) != 1 || string(got[0].payload) != msg {
		t.Fatalf("the %s gate's neighbour connection: got %v, %v; want the echo %q", cg.name, got, err, msg)
	}

	c, rc := e.open(t, cg, "", "")
	if err := c.send(0, cfMsg(cfOpBinary, "fresh")); err != nil {
		t.Fatalf("a fresh connection to the %s gate: %v", cg.name, err)
	}
	if got, err := c.readMessages(1, cfWait); err != nil || string(got[0].payload) != "fresh" {
		t.Fatalf("a fresh connection to the %s gate: got %v, %v\n%s", cg.name, got, err, c.report())
	}
	_ = c.send(0, cfMsg(cfOpClose, cfCloseBody(1000, "")))
	if code := c.untilClose(cfWait); code != 1000 {
		t.Fatalf("a fresh connection to the %s gate: close %d, want 1000 echoed\n%s\n%s", cg.name, code, c.report(), rc.report())
	}
	c.finish(0, cfWait)
}

func (e *cfEnv) gate(small bool) *cfGate {
	if small {
		return e.small
	}
	return e.big
}

// ---------------------------------------------------------------------------------------------
// Runners

// cfFatal is a client protocol fault: the gate must close the client with code, tell the
// backend upCode, and forward exactly the data frames pass before it.
type cfFatal struct {
	small  bool // against the 4 KiB gate
	chop   int
	frames []cfOut
	code   int      // close code the client must get
	upCode int      // close code the backend must get: 0 means 1001; -1 means 1001 or none
	pass   [][]byte // payloads of the data frames that reach the backend, in order
	heap   bool     // also check the gate's heap stayed small
	// cut allows the backend one more data frame, cut short with its connection: the valid
	// start of a long frame whose fault lies beyond the gate's first chunk.
	cut bool
}

func (f cfFatal) c(name string) cfCase {
	return cfCase{name: name, run: func(t *testing.T, e *cfEnv) { e.runFatal(t, f) }}
}

func (e *cfEnv) runFatal(t *testing.T, f cfFatal) {
	cg := e.gate(f.small)
	c, rc := e.open(t, cg, "", "")
	// Writes may fail once the gate has found the fault and closed: what matters is what it
	// answered.
	werr := c.send(f.chop, f.frames...)
	_ = c.send(0, cfMsg(cfOpPing, cfAfterFatal))
	code := c.untilClose(cfWait)
	// Answer the close and hang up: whether the gate then ends the connection by itself is
	// the business of the fault-close-handshake cases. Any pong would have come before the
	// gate's close frame.
	if code >= 1000 {
		_ = c.send(0, cfMsg(cfOpClose, cfCloseBody(code, "")))
	}
	c.nc.Close()
	got := c.log()
	rlog := rc.wait(t)
	fail := func(format string, args ...any) {
		t.Helper()
		t.Errorf("%s\n  %s\n  %s (write error: %v)", fmt.Sprintf(format, args...), c.report(), rc.report(), werr)
	}
	if code != f.code {
		fail("client got close %d, want %d", code, f.code)
	}
	for _, fr := range got {
		if fr.op == cfOpPong {
			fail("a pong came back after the fatal frame: %v", fr)
		}
	}
	if err := cfCheckStream(got, false); err != nil {
		fail("the gate sent the client an invalid frame: %v", err)
	}
	if err := cfCheckStream(rlog, true); err != nil {
		fail("an invalid frame reached the backend: %v", err)
	}
	for _, fr := range rlog {
		if fr.op == cfOpPing && string(fr.payload) == cfAfterFatal {
			fail("the ping sent after the fatal frame reached the backend")
		}
	}
	data := cfDataPayloads(rlog)
	if f.cut && len(rlog) > 0 && rlog[len(rlog)-1].partial && rlog[len(rlog)-1].op <= cfOpBinary {
		last := rlog[len(rlog)-1]
		t.Logf("the backend got %d of the %d bytes of the faulty frame, then its connection ended without a close frame",
			len(last.payload), last.length)
		data = data[:len(data)-1]
	}
	if !cfSamePayloads(data, f.pass) {
		fail("the backend received data frames %s, want %s", cfPayloadList(data), cfPayloadList(f.pass))
	}
	up := cfLastClose(rlog)
	switch {
	case f.upCode == 0 && up != 1001, f.upCode > 0 && up != f.upCode, f.upCode == -1 && up != 1001 && up != 0:
		fail("the backend got close %d (0: none), want %d", up, max(f.upCode, 1001))
	}
	if f.heap {
		e.checkHeap(t, cg)
	}
	e.healthy(t, cg)
}

func (e *cfEnv) checkHeap(t *testing.T, cg *cfGate) {
	t.Helper()
	const limit = 256 << 20
	if h := cg.g.Metric(t, "go_memstats_heap_inuse_bytes", nil); h > limit {
		t.Errorf("the %s gate's heap in use is %.0f MiB, over %d MiB", cg.name, h/(1<<20), limit>>20)
	}
}

// cfEcho is valid traffic: the messages come back byte-exact, the backend received exactly
// them, and a close 1000 completes.
type cfEcho struct {
	small  bool
	chop   int
	frames []cfOut
	want   []cfMessage
}

func (f cfEcho) c(name string) cfCase {
	return cfCase{name: name, run: func(t *testing.T, e *cfEnv) { e.runEcho(t, f) }}
}

func (e *cfEnv) runEcho(t *testing.T, f cfEcho) {
	cg := e.gate(f.small)
	c, rc := e.open(t, cg, "", "")
	// A writer goroutine, so that a large message streams back while it is still being written.
	werr := make(chan error, 1)
	go func() { werr <- c.send(f.chop, f.frames...) }()
	got, err := c.readMessages(len(f.want), 4*cfWait)
	if err != nil {
		t.Fatalf("echo: %v\n  %s\n  %s", err, c.report(), rc.report())
	}
	if err := <-werr; err != nil {
		t.Fatalf("writing: %v", err)
	}
	if !cfSameMessages(got, f.want) {
		t.Errorf("echoed %v, want %v", got, f.want)
	}
	e.closeNormally(t, c, rc)
	rlog := rc.wait(t)
	if err := cfCheckStream(rlog, true); err != nil {
		t.Errorf("an invalid frame reached the backend: %v\n  %s", err, rc.report())
	}
	if m := cfMessages(rlog); !cfSameMessages(m, f.want) {
		t.Errorf("the backend received %v, want %v", m, f.want)
	}
	if err := cfCheckStream(c.log(), false); err != nil {
		t.Errorf("the gate sent the client an invalid frame: %v\n  %s", err, c.report())
	}
	e.healthy(t, cg)
}

// closeNormally sends close 1000 and expects it echoed by the backend through the gate.
func (e *cfEnv) closeNormally(t *testing.T, c *cfClient, rc *recordedConn) {
	t.Helper()
	if err := c.send(0, cfMsg(cfOpClose, cfCloseBody(1000, "done"))); err != nil {
		t.Fatalf("sending close: %v", err)
	}
	if code := c.untilClose(cfWait); code != 1000 {
		t.Errorf("close 1000 came back as %d\n  %s\n  %s", code, c.report(), rc.report())
	}
	if !c.finish(0, cfWait) {
		t.Errorf("the gate did not end the connection after the close handshake")
	}
	if up := cfLastClose(rc.wait(t)); up != 1000 {
		t.Errorf("the backend got close %d, want 1000\n  %s", up, rc.report())
	}
}

func cfSameMessages(a, b []cfMessage) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i].op != b[i].op || !bytes.Equal(a[i].payload, b[i].payload) {
			return false
		}
	}
	return true
}

func cfSamePayloads(a, b [][]byte) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !bytes.Equal(a[i], b[i]) {
			return false
		}
	}
	return true
}

func cfPayloadList(p [][]byte) string {
	if len(p) > 6 {
		return fmt.Sprintf("%d frames (first %q, last %d bytes)", len(p), cfTrunc(p[0]), len(p[len(p)-1]))
	}
	var s []string
	for _, b := range p {
		s = append(s, fmt.Sprintf("%q", cfTrunc(b)))
	}
	return "[" + strings.Join(s, " ") + "]"
}

func cfTrunc(b []byte) []byte {
	if len(b) > 24 {
		return b[:24]
	}
	return b
}

// ---------------------------------------------------------------------------------------------
// Cases

var cfChops = []struct {
	name string
	n    int
}{{"whole", 0}, {"chop997", 997}, {"chop1", 1}}

func cfUnmaskedCases() []cfCase {
	var cs []cfCase
	for _, ch := range cfChops {
		for _, f := range []struct {
			name string
			out  cfOut
		}{
			{"text", cfMsg(cfOpText, "unmasked text")},
			{"binary", cfMsg(cfOpBinary, "unmasked binary")},
			{"ping", cfMsg(cfOpPing, "unmasked ping")},
			{"close", cfMsg(cfOpClose, cfCloseBody(1000, "unmasked close"))},
		} {
			cs = append(cs, cfFatal{chop: ch.n, frames: []cfOut{f.out.cfServer()}, code: 1002}.c(f.name+"/"+ch.name))
		}
	}
	// A masked first fragment passes; its unmasked continuation is the fault.
	cs = append(cs, cfFatal{
		frames: []cfOut{cfFrag(cfOpText, false, "masked-"), cfFrag(cfOpCont, true, "unmasked").cfServer()},
		code:   1002, pass: [][]byte{[]byte("masked-")},
	}.c("continuation"))
	return cs
}

func cfReservedBitsCases() []cfCase {
	var cs []cfCase
	for rsv := byte(1); rsv <= 7; rsv++ {
		for _, f := range []struct {
			name string
			out  cfOut
		}{
			{"text", cfMsg(cfOpText, "reserved bits")},
			{"binary", cfMsg(cfOpBinary, "reserved bits")},
			{"ping", cfMsg(cfOpPing, "reserved bits")},
			{"close", cfMsg(cfOpClose, cfCloseBody(1000, "reserved bits"))},
		} {
			out := f.out
			out.rsv = rsv
			chop := 0
			if rsv == 4 {
				chop = 1
			}
			cs = append(cs, cfFatal{chop: chop, frames: []cfOut{out}, code: 1002}.c(fmt.Sprintf("%s/rsv%d", f.name, rsv)))
		}
	}
	// RSV on a continuation of an open message.
	cs = append(cs, cfFatal{
		frames: []cfOut{cfFrag(cfOpText, false, "first-"), {fin: true, rsv: 2, op: cfOpCont, payload: []byte("second")}},
		code:   1002, pass: [][]byte{[]byte("first-")},
	}.c("continuation/rsv2"))
	return cs
}

func cfReservedOpcodeCases() []cfCase {
	var cs []cfCase
	for _, op := range []byte{3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF} {
		cs = append(cs, cfFatal{frames: []cfOut{cfMsg(op, "reserved opcode")}, code: 1002}.c(fmt.Sprintf("op%#x", op)))
		cs = append(cs, cfFatal{frames: []cfOut{{fin: true, op: op}}, code: 1002}.c(fmt.Sprintf("op%#x/empty", op)))
	}
	cs = append(cs,
		cfFatal{chop: 1, frames: []cfOut{cfMsg(0x5, "reserved opcode")}, code: 1002}.c("op0x5/chop1"),
		cfFatal{
			frames: []cfOut{cfFrag(cfOpBinary, false, "first-"), cfMsg(0x4, "reserved in a message")},
			code:   1002, pass: [][]byte{[]byte("first-")},
		}.c("op0x4/mid-message"),
		cfFatal{
			frames: []cfOut{cfFrag(cfOpText, false, "first-"), cfMsg(0xC, "reserved control in a message")},
			code:   1002, pass: [][]byte{[]byte("first-")},
		}.c("op0xc/mid-message"),
	)
	return cs
}

func cfBadControlCases() []cfCase {
	p126 := strings.Repeat("p", 126)
	var cs []cfCase
	for _, ch := range cfChops {
		for _, f := range []struct {
			name   string
			frames []cfOut
			pass   []string
		}{
			{"ping-126", []cfOut{cfMsg(cfOpPing, p126)}, nil},
			{"pong-126", []cfOut{cfMsg(cfOpPong, p126)}, nil},
			{"close-126", []cfOut{cfMsg(cfOpClose, cfCloseBody(1000, p126[:124]))}, nil}, // a 124-byte close reason
			{"ping-fragmented", []cfOut{cfFrag(cfOpPing, false, "frag-"), cfFrag(cfOpCont, true, "ment")}, nil},
			{"close-fragmented", []cfOut{cfFrag(cfOpClose, false, cfCloseBody(1000, "frag")), cfFrag(cfOpCont, true, "ment")}, nil},
			{"close-1-byte-body", []cfOut{cfMsg(cfOpClose, "\x03")}, nil},
			// A control frame over 125 bytes announced in the 64-bit form.
			{"ping-64bit-200", []cfOut{{fin: true, op: cfOpPing, payload: bytes.Repeat([]byte("q"), 200), form: cfLen64}}, nil},
			// A fragmented ping inside a fragmented text message.
			{"ping-fragmented-mid-message", []cfOut{cfFrag(cfOpText, false, "text-"), cfFrag(cfOpPing, false, "frag")}, []string{"text-"}},
		} {
			var pass [][]byte
			for _, p := range f.pass {
				pass = append(pass, []byte(p))
			}
			cs = append(cs, cfFatal{chop: ch.n, frames: f.frames, code: 1002, pass: pass}.c(f.name+"/"+ch.name))
		}
	}
	return cs
}

func cfPingCases() []cfCase {
	all := make([]byte, 125)
	for i := range all {
		all[i] = byte(i * 2)
	}
	ten := make([]string, 10)
	for i := range ten {
		ten[i] = fmt.Sprintf("ping-%d", i)
	}
	cs := []cfCase{
		cfPingEcho("empty", 0, ""),
		cfPingEcho("125-bytes", 0, strings.Repeat("x", 125)),
		cfPingEcho("binary-payload", 0, string(all)),
		cfPingEcho("chop1", 1, "pinged one byte at a time"),
		cfPingEcho("125-bytes/chop1", 1, string(all)),
		cfPingEcho("10-in-order", 0, ten...),
		cfPingEcho("10-in-order/chop1", 1, ten...),
		cfPingEchoForm("125-bytes/16bit-form", 0, cfLen16, string(all)), // non-minimal, which readers accept
	}
	for _, ch := range cfChops {
		ch := ch
		cs = append(cs, cfCase{name: "between-fragments/" + ch.name, run: func(t *testing.T, e *cfEnv) {
			e.runPingBetween(t, ch.n)
		}})
	}
	cs = append(cs, cfCase{name: "unsolicited-pong", run: func(t *testing.T, e *cfEnv) {
		c, rc := e.open(t, e.big, "", "")
		if err := c.send(1, cfMsg(cfOpPong, "unsolicited"), cfMsg(cfOpText, "after the pong")); err != nil {
			t.Fatal(err)
		}
		got, err := c.readMessages(1, cfWait)
		if err != nil || string(got[0].payload) != "after the pong" {
			t.Fatalf("got %v, %v\n  %s\n  %s", got, err, c.report(), rc.report())
		}
		for _, f := range c.log() {
			if f.op == cfOpPing || f.op == cfOpPong {
				t.Errorf("a %v came back for an unsolicited pong", f)
			}
		}
		e.closeNormally(t, c, rc)
		rlog := rc.wait(t)
		if len(rlog) < 2 || rlog[0].op != cfOpPong || string(rlog[0].payload) != "unsolicited" || string(rlog[1].payload) != "after the pong" {
			t.Errorf("the backend did not get the pong, then the message\n  %s", rc.report())
		}
		if err := cfCheckStream(rlog, true); err != nil {
			t.Errorf("an invalid frame reached the backend: %v", err)
		}
		e.healthy(t, e.big)
	}})
	return cs
}

// cfPingEcho sends pings and expects the backend's pongs, in order and byte-exact.
func cfPingEcho(name string, chop int, payloads ...string) cfCase {
	return cfPingEchoForm(name, chop, cfLenAuto, payloads...)
}

func cfPingEchoForm(name string, chop int, form cfLenForm, payloads ...string) cfCase {
	return cfCase{name: name, run: func(t *testing.T, e *cfEnv) {
		c, rc := e.open(t, e.big, "", "")
		var frames []cfOut
		for _, p := range payloads {
			f := cfMsg(cfOpPing, p)
			f.form = form
			frames = append(frames, f)
		}
		if err := c.send(chop, frames...); err != nil {
			t.Fatal(err)
		}
		for i, p := range payloads {
			f, ok := c.next(cfWait)
			if !ok || f.op != cfOpPong || string(f.payload) != p {
				t.Fatalf("frame %d: got %v (ok %v), want the pong %q\n  %s\n  %s", i, f, ok, cfTrunc([]byte(p)), c.report(), rc.report())
			}
		}
		e.closeNormally(t, c, rc)
		rlog := rc.wait(t)
		if err := cfCheckStream(rlog, true); err != nil {
			t.Errorf("an invalid frame reached the backend: %v", err)
		}
		var pings []string
		for _, f := range rlog {
			if f.op == cfOpPing {
				pings = append(pings, string(f.payload))
			}
		}
		if strings.Join(pings, "\x00") != strings.Join(payloads, "\x00") || len(pings) != len(payloads) {
			t.Errorf("the backend got pings %q, want %q", pings, payloads)
		}
		e.healthy(t, e.big)
	}}
}

// runPingBetween opens a fragmented text message, sends two pings, and waits for both pongs
// before it sends the last fragment: the gate must not hold control frames until a message
// completes.
func (e *cfEnv) runPingBetween(t *testing.T, chop int) {
	c, rc := e.open(t, e.big, "", "")
	if err := c.send(chop, cfFrag(cfOpText, false, "Hello, "), cfMsg(cfOpPing, "between-1"), cfMsg(cfOpPing, "between-2")); err != nil {
		t.Fatal(err)
	}
	var pongs []string
	_, ok := c.until(cfWait, func(f cfFrame) bool {
		if f.op == cfOpPong {
			pongs = append(pongs, string(f.payload))
		}
		return len(pongs) == 2
	})
	if !ok || pongs[0] != "between-1" || pongs[1] != "between-2" {
		t.Fatalf("before the message completed: pongs %q, want [between-1 between-2]\n  %s\n  %s", pongs, c.report(), rc.report())
	}
	if err := c.send(chop, cfFrag(cfOpCont, false, "wor"), cfMsg(cfOpPing, "between-3"), cfFrag(cfOpCont, true, "ld!")); err != nil {
		t.Fatal(err)
	}
	if _, ok := c.until(cfWait, func(f cfFrame) bool { return f.op == cfOpCont && f.fin }); !ok {
		t.Fatalf("the message did not complete\n  %s", c.report())
	}
	got := c.log()
	if m := cfMessages(got); len(m) != 1 || string(m[0].payload) != "Hello, world!" {
		t.Errorf("echoed %v, want \"Hello, world!\"", m)
	}
	var ctl []string
	for _, f := range got {
		if f.op == cfOpPong {
			ctl = append(ctl, string(f.payload))
		}
	}
	if strings.Join(ctl, ",") != "between-1,between-2,between-3" {
		t.Errorf("pongs %q, want between-1, between-2, between-3 in order", ctl)
	}
	e.closeNormally(t, c, rc)
	rlog := rc.wait(t)
	if err := cfCheckStream(rlog, true); err != nil {
		t.Errorf("an invalid frame reached the backend: %v", err)
	}
	var seq []string
	for _, f := range rlog {
		seq = append(seq, fmt.Sprintf("%x:%s", f.op, f.payload))
	}
	want := "1:Hello, |9:between-1|9:between-2|0:wor|9:between-3|0:ld!|8:\x03\xe8done"
	if got := strings.Join(seq, "|"); got != want {
		t.Errorf("the backend got %q, want %q", got, want)
	}
	e.healthy(t, e.big)
}

func cfFragmentCases() []cfCase {
	var cs []cfCase
	for _, ch := range cfChops {
		for _, f := range []struct {
			name   string
			frames []cfOut
			pass   []string
		}{
			{"continuation-without-start", []cfOut{cfFrag(cfOpCont, true, "orphan")}, nil},
			{"continuation-without-start-fin0", []cfOut{cfFrag(cfOpCont, false, "orphan"), cfFrag(cfOpCont, true, "s")}, nil},
			{"text-inside-text", []cfOut{cfFrag(cfOpText, false, "one-"), cfMsg(cfOpText, "two")}, []string{"one-"}},
			{"binary-inside-text", []cfOut{cfFrag(cfOpText, false, "one-"), cfFrag(cfOpBinary, false, "two")}, []string{"one-"}},
			{"text-inside-binary", []cfOut{cfFrag(cfOpBinary, false, "one-"), cfFrag(cfOpCont, false, "two-"), cfMsg(cfOpText, "three")}, []string{"one-", "two-"}},
			{"continuation-after-complete", []cfOut{cfFrag(cfOpText, false, "one-"), cfFrag(cfOpCont, true, "two"), cfFrag(cfOpCont, true, "three")}, []string{"one-", "two"}},
		} {
			var pass [][]byte
			for _, p := range f.pass {
				pass = append(pass, []byte(p))
			}
			cs = append(cs, cfFatal{chop: ch.n, frames: f.frames, code: 1002, pass: pass}.c(f.name+"/"+ch.name))
		}
		cs = append(cs,
			cfEcho{chop: ch.n, frames: []cfOut{cfFrag(cfOpText, false, "frag"), cfFrag(cfOpCont, false, "ment"), cfFrag(cfOpCont, true, "ed")},
				want: []cfMessage{{cfOpText, []byte("fragmented")}}}.c("valid-text-3/"+ch.name),
			cfEcho{chop: ch.n, frames: []cfOut{cfFrag(cfOpBinary, false, "\x00\x01"), cfFrag(cfOpCont, true, "\xff\xfe"), cfMsg(cfOpText, "next")},
				want: []cfMessage{{cfOpBinary, []byte("\x00\x01\xff\xfe")}, {cfOpText, []byte("next")}}}.c("valid-binary-then-text/"+ch.name),
			cfEcho{chop: ch.n, frames: []cfOut{cfFrag(cfOpText, false, ""), cfFrag(cfOpCont, false, ""), cfFrag(cfOpCont, true, "")},
				want: []cfMessage{{cfOpText, nil}}}.c("valid-empty-fragments/"+ch.name),
		)
	}
	var oneByte []cfOut
	msg := "one byte per fragment"
	for i := range len(msg) {
		op := cfOpCont
		if i == 0 {
			op = cfOpText
		}
		oneByte = append(oneByte, cfFrag(op, i == len(msg)-1, msg[i:i+1]))
	}
	cs = append(cs, cfEcho{frames: oneByte, want: []cfMessage{{cfOpText, []byte(msg)}}}.c("valid-1-byte-fragments"))
	return cs
}

func cfUTF8Cases() []cfCase {
	var cs []cfCase
	invalid := []struct{ name, s string }{
		{"ff", "\xff"},
		{"fe", "\xfe"},
		{"lone-continuation", "abc\x80def"},
		{"overlong-nul", "\xc0\x80"},
		{"overlong-c1", "\xc1\xbf"},
		{"overlong-3-byte", "\xe0\x80\xaf"},
		{"overlong-4-byte", "\xf0\x80\x80\xaf"},
		{"surrogate-high", "\xed\xa0\x80"},
		{"surrogate-low", "\xed\xbf\xbf"},
		{"above-10ffff", "\xf4\x90\x80\x80"},
		{"f5", "\xf5\x80\x80\x80"},
		{"5-byte-form", "\xf8\x88\x80\x80\x80"},
		{"truncated-at-end", "κόσμε\xe2\x82"},
		{"truncated-then-ascii", "\xe2\x82a"},
		{"kosme-surrogate", "κόσμε\xed\xa0\x80edited"},
	}
	for _, ch := range cfChops {
		for _, v := range invalid {
			cs = append(cs, cfFatal{chop: ch.n, frames: []cfOut{cfMsg(cfOpText, v.s)}, code: 1007}.c("invalid-"+v.name+"/"+ch.name))
		}
		// Invalid in a middle fragment: 1007 there, before the last fragment is sent; the
		// first fragment reached the backend, the bad one did not.
		cs = append(cs,
			cfFatal{chop: ch.n, frames: []cfOut{cfFrag(cfOpText, false, "Hello-"), cfFrag(cfOpCont, false, "bad \xff here")},
				code: 1007, pass: [][]byte{[]byte("Hello-")}}.c("invalid-middle-fragment/"+ch.name),
			// A code point whose first byte is a valid start, made invalid by the next fragment.
			cfFatal{chop: ch.n, frames: []cfOut{cfFrag(cfOpText, false, "ab\xed"), cfFrag(cfOpCont, false, "\xa0\x80")},
				code: 1007, pass: [][]byte{[]byte("ab\xed")}}.c("invalid-split-surrogate/"+ch.name),
			// The message ends inside a code point.
			cfFatal{chop: ch.n, frames: []cfOut{cfFrag(cfOpText, false, "ab\xf0\x9f"), cfFrag(cfOpCont, true, "\x98")},
				code: 1007, pass: [][]byte{[]byte("ab\xf0\x9f")}}.c("invalid-ends-inside-code-point/"+ch.name),
		)
	}
	// Invalid beyond the gate's first 32 KiB chunk of a long frame: the gate may have sent the
	// valid start of the frame on; the backend then cannot be sent a close frame inside the
	// cut frame, so its connection may just end.
	long := strings.Repeat("a", 35000) + "\xff" + strings.Repeat("b", 4999)
	cs = append(cs, cfFatal{frames: []cfOut{cfMsg(cfOpText, long)}, code: 1007, upCode: -1, cut: true}.c("invalid-at-35000-of-40000"))

	// Valid code points split across fragments at every byte: echoed byte-exact.
	for _, v := range []struct{ name, s string }{
		{"2-byte", "é"},
		{"3-byte", "€"},
		{"4-byte", "😀"},
		{"kosme", "κόσμε"},
		{"boundaries", "\x00\x7f\u0080\u07ff\u0800\uffff\U00010000\U0010ffff\ud7ff\ue000\ufffe"},
	} {
		var frames []cfOut
		var want []cfMessage
		b := []byte(v.s)
		for cut := 0; cut <= len(b); cut++ {
			frames = append(frames, cfFrag(cfOpText, false, string(b[:cut])), cfFrag(cfOpCont, true, string(b[cut:])))
			want = append(want, cfMessage{cfOpText, b})
		}
		// And one byte per fragment.
		for i := range b {
			op := cfOpCont
			if i == 0 {
				op = cfOpText
			}
			frames = append(frames, cfFrag(op, i == len(b)-1, string(b[i:i+1])))
		}
		want = append(want, cfMessage{cfOpText, b})
		frames = append(frames, cfMsg(cfOpText, v.s))
		want = append(want, cfMessage{cfOpText, b})
		for _, ch := range cfChops {
			cs = append(cs, cfEcho{chop: ch.n, frames: frames, want: want}.c("valid-split-"+v.name+"/"+ch.name))
		}
	}
	return cs
}

func cfCloseCases() []cfCase {
	var cs []cfCase
	valid := []int{1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 3001, 3999, 4000, 4001, 4998, 4999}
	for _, code := range valid {
		cs = append(cs, cfCloseEcho(fmt.Sprintf("valid-%d", code), 0, cfCloseBody(code, fmt.Sprintf("reason %d", code))))
	}
	cs = append(cs,
		cfCloseEcho("valid-no-body", 0, ""),
		cfCloseEcho("valid-no-reason", 0, cfCloseBody(1000, "")),
		cfCloseEcho("valid-123-byte-reason", 0, cfCloseBody(1000, strings.Repeat("r", 123))),
		cfCloseEcho("valid-utf8-reason", 0, cfCloseBody(4000, "κόσμε 😀")),
		cfCloseEcho("valid-3000/chop1", 1, cfCloseBody(3000, "chopped")),
	)
	for _, code := range []int{0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535} {
		cs = append(cs, cfFatal{frames: []cfOut{cfMsg(cfOpClose, cfCloseBody(code, "invalid"))}, code: 1002}.c(fmt.Sprintf("invalid-%d", code)))
	}
	cs = append(cs,
		cfFatal{chop: 1, frames: []cfOut{cfMsg(cfOpClose, cfCloseBody(1005, ""))}, code: 1002}.c("invalid-1005/chop1"),
		cfFatal{frames: []cfOut{cfMsg(cfOpClose, cfCloseBody(1000, "bad \xff reason"))}, code: 1007}.c("invalid-utf8-reason"),
		cfFatal{frames: []cfOut{cfMsg(cfOpClose, cfCloseBody(1000, "cut \xe2\x82"))}, code: 1007}.c("invalid-utf8-reason-truncated"),
		// A close inside a fragmented message is valid: it is echoed and ends the message.
		cfCase{name: "valid-inside-fragmented-message", run: func(t *testing.T, e *cfEnv) {
			e.runCloseEcho(t, 0, cfCloseBody(1000, "mid-message"), cfFrag(cfOpText, false, "open-"))
		}},
	)
	return cs
}

// cfCloseEcho sends a valid close frame, which the backend echoes through the gate.
func cfCloseEcho(name string, chop int, body string) cfCase {
	return cfCase{name: name, run: func(t *testing.T, e *cfEnv) { e.runCloseEcho(t, chop, body) }}
}

func (e *cfEnv) runCloseEcho(t *testing.T, chop int, body string, before ...cfOut) {
	c, rc := e.open(t, e.big, "", "")
	if err := c.send(chop, append(before, cfMsg(cfOpClose, body))...); err != nil {
		t.Fatal(err)
	}
	f, ok := c.until(cfWait, func(f cfFrame) bool { return f.op == cfOpClose })
	if !ok || string(f.payload) != body {
		t.Errorf("got close %v (ok %v), want the body %q echoed\n  %s\n  %s", f, ok, body, c.report(), rc.report())
	}
	if !c.finish(0, cfWait) {
		t.Errorf("the gate did not end the connection after the close handshake")
	}
	rlog := rc.wait(t)
	if err := cfCheckStream(rlog, true); err != nil {
		t.Errorf("an invalid frame reached the backend: %v", err)
	}
	if len(rlog) != len(before)+1 || rlog[len(rlog)-1].op != cfOpClose || string(rlog[len(rlog)-1].payload) != body {
		t.Errorf("the backend did not get exactly the close frame\n  %s", rc.report())
	}
	if err := cfCheckStream(c.log(), false); err != nil {
		t.Errorf("the gate sent the client an invalid frame: %v", err)
	}
	e.healthy(t, e.big)
}

// cfPattern returns n bytes: printable ASCII for text, every byte value for binary.
func cfPattern(n int, op byte) []byte {
	p := make([]byte, n)
	for i := range p {
		if op == cfOpText {
			p[i] = byte(' ' + i%95)
		} else {
			p[i] = byte(i * 7)
		}
	}
	return p
}

func cfLengthCases() []cfCase {
	var cs []cfCase
	for _, n := range []int{0, 1, 125, 126, 127, 128, 997, 998, 65535, 65536} {
		for _, op := range []byte{cfOpText, cfOpBinary} {
			typ := map[byte]string{cfOpText: "text", cfOpBinary: "binary"}[op]
			for _, ch := range cfChops {
				if ch.n == 1 && n >= 65535 && op == cfOpText {
					continue // one 64 KiB message in 1-byte chops (binary) is enough
				}
				p := cfPattern(n, op)
				cs = append(cs, cfEcho{chop: ch.n, frames: []cfOut{{fin: true, op: op, payload: p}},
					want: []cfMessage{{op, p}}}.c(fmt.Sprintf("%s-%d/%s", typ, n, ch.name)))
			}
		}
	}
	// Each length form, also in non-minimal use (RFC 6455 asks for the minimal form but
	// readers accept any).
	for _, f := range []struct {
		name string
		n    int
		form cfLenForm
	}{{"16bit-form-5", 5, cfLen16}, {"64bit-form-5", 5, cfLen64}, {"64bit-form-300", 300, cfLen64}} {
		p := cfPattern(f.n, cfOpBinary)
		cs = append(cs, cfEcho{frames: []cfOut{{fin: true, op: cfOpBinary, payload: p, form: f.form}},
			want: []cfMessage{{cfOpBinary, p}}}.c(f.name))
	}
	for _, ch := range cfChops {
		cs = append(cs,
			cfFatal{chop: ch.n, frames: []cfOut{{fin: true, op: cfOpBinary, payload: []byte("abc"), announce: 1<<63 | 3, hasAnnounce: true}},
				code: 1002}.c("64bit-top-bit-set/"+ch.name),
			cfFatal{chop: ch.n, frames: []cfOut{{fin: true, op: cfOpText, announce: 1 << 63, hasAnnounce: true}},
				code: 1002}.c("64bit-only-top-bit/"+ch.name),
		)
	}
	return cs
}

func cfMaxMessageCases() []cfCase {
	kib := strings.Repeat("k", 1024)
	var manyKiB []cfOut
	var manyPass [][]byte
	for i := range 1024 {
		op := cfOpCont
		if i == 0 {
			op = cfOpText
		}
		manyKiB = append(manyKiB, cfFrag(op, false, kib))
		manyPass = append(manyPass, []byte(kib))
	}
	exactMiB := append(append([]cfOut{}, manyKiB...), cfFrag(cfOpCont, true, ""))
	overMiB := append(append([]cfOut{}, manyKiB...), cfFrag(cfOpCont, false, "!"))
	huge := func(op byte) cfOut { return cfOut{fin: true, op: op, announce: 1 << 40, hasAnnounce: true} }
	return []cfCase{
		cfFatal{frames: []cfOut{huge(cfOpBinary)}, code: 1009, heap: true}.c("announce-2^40-binary"),
		cfFatal{frames: []cfOut{huge(cfOpText)}, code: 1009, heap: true}.c("announce-2^40-text"),
		cfFatal{chop: 1, frames: []cfOut{huge(cfOpBinary)}, code: 1009, heap: true}.c("announce-2^40/chop1"),
		cfFatal{frames: []cfOut{cfFrag(cfOpBinary, false, "first"), {op: cfOpCont, fin: true, announce: 1 << 40, hasAnnounce: true}},
			code: 1009, pass: [][]byte{[]byte("first")}, heap: true}.c("announce-2^40-continuation"),
		cfFatal{frames: overMiB, code: 1009, pass: manyPass, heap: true}.c("1024-fragments-of-1KiB-plus-1-byte"),
		cfEcho{frames: exactMiB, want: []cfMessage{{cfOpText, bytes.Repeat([]byte(kib), 1024)}}}.c("exactly-1MiB-in-1025-fragments"),

		// The 4 KiB gate.
		cfEcho{small: true, frames: []cfOut{{fin: true, op: cfOpBinary, payload: cfPattern(4096, cfOpBinary)}},
			want: []cfMessage{{cfOpBinary, cfPattern(4096, cfOpBinary)}}}.c("small/exactly-4096"),
		cfEcho{small: true, frames: append(append([]cfOut{}, manyKiB[:3]...), cfFrag(cfOpCont, true, kib)),
			want: []cfMessage{{cfOpText, bytes.Repeat([]byte(kib), 4)}}}.c("small/exactly-4096-in-4-fragments"),
		cfFatal{small: true, frames: []cfOut{{fin: true, op: cfOpBinary, payload: cfPattern(4097, cfOpBinary)}}, code: 1009}.c("small/4097"),
		cfFatal{small: true, chop: 997, frames: []cfOut{{fin: true, op: cfOpText, payload: cfPattern(4097, cfOpText)}}, code: 1009}.c("small/4097/chop997"),
		cfFatal{small: true, frames: append(append([]cfOut{}, manyKiB[:4]...), cfFrag(cfOpCont, true, "!")), code: 1009,
			pass: manyPass[:4]}.c("small/4-fragments-of-1KiB-plus-1-byte"),
		cfFatal{small: true, frames: []cfOut{huge(cfOpBinary)}, code: 1009, heap: true}.c("small/announce-2^40"),
	}
}

func cfUpstreamCases() []cfCase {
	var cs []cfCase
	for _, u := range []struct {
		kind  string
		small bool
		pass  []string // data frames the client gets before the close
		code  int      // the client's close code
		up    int      // the backend's close code
	}{
		{kind: "masked", code: 1014, up: 1002},
		{kind: "rsv", code: 1014, up: 1002},
		{kind: "rsv-ping", code: 1014, up: 1002},
		{kind: "opcode", code: 1014, up: 1002},
		{kind: "utf8", code: 1014, up: 1007},
		{kind: "utf8-frag", pass: []string{"ok-"}, code: 1014, up: 1007},
		{kind: "len62", code: 1014, up: 1009},
		{kind: "len64msb", code: 1014, up: 1002},
		{kind: "ping-long", code: 1014, up: 1002},
		{kind: "ping-frag", code: 1014, up: 1002},
		{kind: "cont", code: 1014, up: 1002},
		{kind: "new-in-frag", pass: []string{"one-"}, code: 1014, up: 1002},
		{kind: "close-code", code: 1014, up: 1002},
		{kind: "close-1byte", code: 1014, up: 1002},
		{kind: "big-small-gate", small: true, code: 1014, up: 1009},
		// Not faults: a backend's own close codes reach the client, 1012-1014 included.
		{kind: "close-1013", code: 1013, up: 1013},
		{kind: "close-1014", code: 1014, up: 1014},
		{kind: "close-4000", code: 4000, up: 4000},
	} {
		cs = append(cs, cfCase{name: u.kind, run: func(t *testing.T, e *cfEnv) {
			cg := e.gate(u.small)
			c, rc := e.open(t, cg, "", u.kind)
			if err := c.send(0, cfMsg(cfOpText, "go")); err != nil {
				t.Fatal(err)
			}
			code := c.untilClose(cfWait)
			ended := c.finish(code, cfWait)
			got := c.log()
			rlog := rc.wait(t)
			fail := func(format string, args ...any) {
				t.Helper()
				t.Errorf("%s\n  %s\n  %s", fmt.Sprintf(format, args...), c.report(), rc.report())
			}
			if code != u.code {
				fail("client got close %d, want %d", code, u.code)
			}
			if !ended {
				fail("the gate did not end the client connection within %v of the close handshake", cfWait)
			}
			if err := cfCheckStream(got, false); err != nil {
				fail("the gate passed an invalid frame to the client: %v", err)
			}
			var pass [][]byte
			for _, p := range u.pass {
				pass = append(pass, []byte(p))
			}
			if data := cfDataPayloads(got); !cfSamePayloads(data, pass) {
				fail("the client received data frames %s, want %s", cfPayloadList(data), cfPayloadList(pass))
			}
			if err := cfCheckStream(rlog, true); err != nil {
				fail("an invalid frame reached the backend: %v", err)
			}
			if data := cfDataPayloads(rlog); !cfSamePayloads(data, [][]byte{[]byte("go")}) {
				fail("the backend received data frames %s, want [\"go\"]", cfPayloadList(data))
			}
			if up := cfLastClose(rlog); up != u.up {
				fail("the backend got close %d (0: none), want %d", up, u.up)
			}
			e.healthy(t, cg)
		}})
	}
	return cs
}

// cfFaultHandshakeCases check the end of the close handshake after a client fault: the gate
// sent its close frame, the client answers with its own (RFC 6455 section 5.5.1), and the
// gate must then end the TCP connection. Its close timeout is a fixed 5 s, so ending the
// connection within half of it shows that the gate recognised the client's close frame rather
// than timing out. The masking keys are zero so that the bytes after the faulty header are
// the same on every run.
func cfFaultHandshakeCases() []cfCase {
	zero := []byte{0, 0, 0, 0}
	pattern := cfPattern(4097, cfOpText)
	var cs []cfCase
	for _, f := range []struct {
		name  string
		small bool
		out   cfOut
		code  int
	}{
		{"after-unmasked-text", false, cfMsg(cfOpText, "unmasked text").cfServer(), 1002},
		{"after-rsv1-text", false, cfOut{fin: true, rsv: 4, op: cfOpText, payload: []byte("reserved bits!!"), key: zero}, 1002},
		{"after-reserved-opcode", false, cfOut{fin: true, op: 0x3, payload: []byte("reserved opcode"), key: zero}, 1002},
		{"after-126-byte-ping", false, cfOut{fin: true, op: cfOpPing, payload: bytes.Repeat([]byte("p"), 126), key: zero}, 1002},
		{"after-4097-byte-message-small-gate", true, cfOut{fin: true, op: cfOpText, payload: pattern, key: zero}, 1009},
		{"after-2^40-header", false, cfOut{fin: true, op: cfOpBinary, announce: 1 << 40, hasAnnounce: true}, 1009},
		{"after-invalid-utf8", false, cfOut{fin: true, op: cfOpText, payload: []byte("bad \xff"), key: zero}, 1007},
		{"after-invalid-close-code", false, cfOut{fin: true, op: cfOpClose, payload: []byte(cfCloseBody(1005, "")), key: zero}, 1002},
	} {
		f := f
		cs = append(cs, cfCase{name: f.name, run: func(t *testing.T, e *cfEnv) {
			cg := e.gate(f.small)
			c, rc := e.open(t, cg, "", "")
			werr := c.send(0, f.out)
			code := c.untilClose(cfWait)
			if code != f.code {
				t.Fatalf("client got close %d, want %d (write error %v)\n  %s\n  %s", code, f.code, werr, c.report(), rc.report())
			}
			replied := time.Now()
			if !c.finish(code, cfCloseWait) {
				t.Errorf("the gate did not end the TCP connection within %v of the client's close reply "+
					"(its close timeout is a fixed 5 s): it did not recognise the reply\n  %s\n  %s",
					cfCloseWait, c.report(), rc.report())
			} else {
				t.Logf("the gate ended the connection %v after the client's close reply", time.Since(replied).Round(time.Millisecond))
			}
			rc.wait(t)
			e.healthy(t, cg)
		}})
	}
	return cs
}

// cfCloseWait is half the gate's fixed close timeout.
const cfCloseWait = 2500 * time.Millisecond
