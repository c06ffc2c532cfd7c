package proxy

import (
	"net/netip"
	"strings"
	"testing"
	"unicode/utf8"
)

// TestDisconnect lists and closes connections by client IP: each gets 1008
// with the reason; a Match naming nothing closes nothing.
func TestDisconnect(t *testing.T) {
	g := newGate(t, backend(t).URL, nil)
	_, br1 := rawClient(t, g, "/echo")
	_, br2 := rawClient(t, g, "/echo")
	waitFor(t, func() bool { return g.proxy.Active() == 2 })
	if n := g.proxy.Disconnect(Match{}, "x"); n != 0 {
		t.Fatalf("an empty match closed %d connections", n)
	}
	other := Match{IP: netip.MustParseAddr("127.0.0.2")}
	if got := g.proxy.Connections(other); len(got) != 0 {
		t.Fatalf("127.0.0.2 has %d connections", len(got))
	}
	local := Match{IP: netip.MustParseAddr("127.0.0.1")}
	conns := g.proxy.Connections(local)
	if len(conns) != 2 || conns[0].IP != "127.0.0.1" || conns[0].Path != "/echo" || conns[0].ID == "" ||
		conns[1].Opened.Before(conns[0].Opened) {
		t.Fatalf("connections: %+v", conns)
	}
	if n := g.proxy.Disconnect(local, "abuse report"); n != 2 {
		t.Fatalf("closed %d, want 2", n)
	}
	if code, _ := readUntilClose(t, br1); code != 1008 {
		t.Fatalf("close %d, want 1008", code)
	}
	if code, _ := readUntilClose(t, br2); code != 1008 {
		t.Fatalf("close %d, want 1008", code)
	}
	waitFor(t, func() bool { return g.proxy.Active() == 0 })
}

func TestCloseReason(t *testing.T) {
	long := strings.Repeat("é", 100) // 200 bytes
	got := closeReason(long)
	if len(got) > 123 || !utf8.ValidString(got) || !strings.HasPrefix(long, got) || len(got) < 121 {
		t.Fatalf("cut to %d bytes: %q", len(got), got)
	}
	if closeReason("short") != "short" {
		t.Fatal("a short reason changed")
	}
}
