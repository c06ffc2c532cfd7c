package clientip

import (
	"net"
	"net/netip"
	"testing"
)

// addrConn is one end of a net.Pipe that reports a chosen peer address.
type addrConn struct {
	net.Conn
	peer net.Addr
}

func (c addrConn) RemoteAddr() net.Addr { return c.peer }

// listOf is a net.Listener that hands out connections from the given peers,
// in order, then fails.
type listOf struct {
	peers []string
	i     int
}

func (l *listOf) Accept() (net.Conn, error) {
	if l.i == len(l.peers) {
		return nil, net.ErrClosed
	}
	a, b := net.Pipe()
	b.Close()
	ap := netip.MustParseAddrPort(l.peers[l.i])
	l.i++
	return addrConn{Conn: a, peer: net.TCPAddrFromAddrPort(ap)}, nil
}
func (l *listOf) Close() error   { return nil }
func (l *listOf) Addr() net.Addr { return &net.TCPAddr{} }

func TestWatchSinglePeer(t *testing.T) {
	rep := func(n int, peer string) []string {
		out := make([]string, n)
		for i := range out {
			out[i] = peer
		}
		return out
	}
	tests := []struct {
		name  string
		peers []string
		warns []int // the connection counts at which warn runs
	}{
		{"one private peer", rep(10, "10.42.0.7:40000"), []int{3}},
		{"one private IPv6 peer", rep(4, "[fd00::7]:40000"), []int{3}},
		{"mapped private peer", rep(3, "[::ffff:192.168.1.2]:1"), []int{3}},
		{"too few connections", rep(2, "10.42.0.7:40000"), nil},
		{"two private peers", append(rep(2, "10.42.0.7:1"), rep(5, "10.42.0.8:1")...), nil},
		{"public peer", rep(5, "203.0.113.9:1"), nil},
		{"loopback peer", rep(5, "127.0.0.1:1"), nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var warned []int
			accepted := 0
			ln := WatchSinglePeer(&listOf{peers: tt.peers}, 3, func(peer netip.Addr) {
				if want := netip.MustParseAddrPort(tt.peers[0]).Addr().Unmap(); peer != want {
					t.Errorf("warned about %v, want %v", peer, want)
				}
				warned = append(warned, accepted+1)
			})
			for {
				c, err := ln.Accept()
				if err != nil {
					break
				}
				c.Close()
				accepted++
			}
			if accepted != len(tt.peers) {
				t.Fatalf("accepted %d connections, want %d", accepted, len(tt.peers))
			}
			if len(warned) != len(tt.warns) || len(warned) > 0 && warned[0] != tt.warns[0] {
				t.Fatalf("warned at connections %v, want %v", warned, tt.warns)
			}
		})
	}
}
