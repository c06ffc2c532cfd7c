package proxy

import (
	"bufio"
	"context"
	"net/http"
	"net/netip"
	"net/url"
	"sync/atomic"
	"testing"
	"time"

	"github.com/holo/wsgate/auth"
	"github.com/holo/wsgate/limit"
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

// oneUser authenticates every request as alice with token id t-1.
type oneUser struct{}

func (oneUser) Authenticate(context.Context, *http.Request) (auth.Identity, error) {
	return auth.Identity{Subject: "alice", TokenID: "t-1"}, nil
}

func (oneUser) PrepareUpstream(http.Header, url.Values) ([]string, bool) { return nil, false }

// TestRevokedWhileDialing: a token revoked after its handshake was
// admitted but before its pair was tracked (the revocation's Disconnect
// found nothing to close) is closed once the pair is tracked.
func TestRevokedWhileDialing(t *testing.T) {
	var calls atomic.Int32
	g := newGate(t, backend(t).URL, func(c *Config) {
		c.Auth = oneUser{}
		// Not revoked at the token check, revoked from the next look on.
		c.Revoked = func(subject, tokenID string) bool {
			return subject == "alice" && tokenID == "t-1" && calls.Add(1) > 1
		}
	})
	_, br := rawClient(t, g, "/echo")
	if code, _ := readUntilClose(t, br); code != 1008 {
		t.Fatalf("close %d, want 1008", code)
	}
	waitFor(t, func() bool { return g.proxy.Active() == 0 })
}

// TestStartDrainStopsAtShutdown: a drain spread over an hour chooses its
// connections at once; Shutdown stops it, drains every connection its own
// way and returns, leaving no drain behind; after it nothing is drained.
func TestStartDrainStopsAtShutdown(t *testing.T) {
	g := newGate(t, backend(t).URL, nil)
	_, br1 := rawClient(t, g, "/echo")
	_, br2 := rawClient(t, g, "/echo")
	waitFor(t, func() bool { return g.proxy.Active() == 2 })
	if n := g.proxy.StartDrain(1, time.Hour); n != 2 {
		t.Fatalf("the drain chose %d, want 2", n)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := g.proxy.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	for _, br := range []*bufio.Reader{br1, br2} {
		if code, _ := readUntilClose(t, br); code != 1012 {
			t.Fatalf("close %d, want 1012", code)
		}
	}
	if n := g.proxy.StartDrain(1, 0); n != 0 {
		t.Fatalf("a drain after Shutdown chose %d", n)
	}
}

// TestHoldUnderShadow: --shadow spares the rules, not an operator's block.
func TestHoldUnderShadow(t *testing.T) {
	lim, err := limit.New(limit.Config{Rules: limit.Rules{UserMessages: limit.Rule{Limit: 100, Window: time.Minute}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lim.Close() })
	if err := lim.Hold(context.Background(), limit.KeyRef{Scope: limit.ScopeIP, ID: "127.0.0.1"}, time.Minute, "test"); err != nil {
		t.Fatal(err)
	}
	g := newGate(t, backend(t).URL, func(c *Config) { c.Limiter = lim; c.Shadow = true })
	conn, br := rawClient(t, g, "/echo")
	if _, err := conn.Write(maskedFrame(true, 1, []byte("held"))); err != nil {
		t.Fatal(err)
	}
	if code, data := readUntilClose(t, br); code != 4008 || data != 1 {
		t.Fatalf("close %d after %d data frames, want the 429 frame and 4008", code, data)
	}
}
