package clientip

import (
	"net/netip"
	"testing"
)

func BenchmarkClientIP(b *testing.B) {
	r := Resolver{Trusted: mustPrefixes(b, "10.0.0.0/8")}
	peer := netip.MustParseAddr("10.0.0.2")
	xff := []string{"6.6.6.6, 198.51.100.7, 10.1.1.1"}
	b.ReportAllocs()
	for b.Loop() {
		_ = r.Key(r.ClientIP(peer, xff))
	}
}
