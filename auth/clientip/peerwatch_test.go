package clientip

import (
	"net"
	"net/netip"
	"testing"
)

func TestPeerWatch(t *testing.T) {
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
			seen := 0
			w := NewPeerWatch(3, func(peer netip.Addr) {
				if want := netip.MustParseAddrPort(tt.peers[0]).Addr().Unmap(); peer != want {
					t.Errorf("warned about %v, want %v", peer, want)
				}
				warned = append(warned, seen)
			})
			for _, peer := range tt.peers {
				seen++
				w.Observe(net.TCPAddrFromAddrPort(netip.MustParseAddrPort(peer)))
			}
			if len(warned) != len(tt.warns) || len(warned) > 0 && warned[0] != tt.warns[0] {
				t.Fatalf("warned at connections %v, want %v", warned, tt.warns)
			}
		})
	}
}
