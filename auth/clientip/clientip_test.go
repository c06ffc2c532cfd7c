package clientip

import (
	"net/netip"
	"strings"
	"testing"
)

func mustPrefixes(t testing.TB, s ...string) []netip.Prefix {
	p, err := ParsePrefixes(s)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

var xffCases = []struct {
	name    string
	trusted []string
	peer    string
	xff     []string
	want    string
	fwd     string
}{
	{"untrusted peer ignores xff", nil, "203.0.113.9", []string{"1.2.3.4"}, "203.0.113.9", "203.0.113.9"},
	{"trusted peer, one hop", []string{"10.0.0.0/8"}, "10.0.0.2", []string{"198.51.100.7"}, "198.51.100.7", "198.51.100.7, 10.0.0.2"},
	{"forged left-most entry", []string{"10.0.0.0/8"}, "10.0.0.2", []string{"6.6.6.6, 198.51.100.7"}, "198.51.100.7", "6.6.6.6, 198.51.100.7, 10.0.0.2"},
	{"forged trusted-looking entry", []string{"10.0.0.0/8"}, "10.0.0.2", []string{"10.9.9.9, 198.51.100.7"}, "198.51.100.7", "10.9.9.9, 198.51.100.7, 10.0.0.2"},
	{"trusted chain over two lines", []string{"10.0.0.0/8", "192.0.2.1"}, "10.0.0.2", []string{"6.6.6.6, 198.51.100.7", "192.0.2.1, 10.1.1.1"}, "198.51.100.7", "6.6.6.6, 198.51.100.7, 192.0.2.1, 10.1.1.1, 10.0.0.2"},
	{"all trusted: left-most", []string{"10.0.0.0/8"}, "10.0.0.2", []string{"10.0.0.5, 10.0.0.4"}, "10.0.0.5", "10.0.0.5, 10.0.0.4, 10.0.0.2"},
	{"unparsable ends the walk", []string{"10.0.0.0/8"}, "10.0.0.2", []string{"198.51.100.7, unknown, 10.0.0.3"}, "10.0.0.3", "198.51.100.7, unknown, 10.0.0.3, 10.0.0.2"},
	{"no xff", []string{"10.0.0.0/8"}, "10.0.0.2", nil, "10.0.0.2", "10.0.0.2"},
	{"empty entries skipped", []string{"10.0.0.0/8"}, "10.0.0.2", []string{" , 198.51.100.7 ,"}, "198.51.100.7", ", 198.51.100.7 ,, 10.0.0.2"},
	{"ipv4-mapped peer and hop", []string{"10.0.0.0/8"}, "::ffff:10.0.0.2", []string{"::ffff:198.51.100.7"}, "198.51.100.7", "::ffff:198.51.100.7, 10.0.0.2"},
	{"mapped trusted prefix", []string{"::ffff:10.0.0.0/104"}, "10.0.0.2", []string{"198.51.100.7"}, "198.51.100.7", "198.51.100.7, 10.0.0.2"},
	{"hop with port", []string{"10.0.0.0/8"}, "10.0.0.2", []string{"[2001:db8::1]:443"}, "2001:db8::1", "[2001:db8::1]:443, 10.0.0.2"},
	{"ipv6 proxy", []string{"fd00::/8"}, "fd00::1", []string{"2001:db8:1:2::99"}, "2001:db8:1:2::99", "2001:db8:1:2::99, fd00::1"},
}

func TestClientIP(t *testing.T) {
	for _, tc := range xffCases {
		t.Run(tc.name, func(t *testing.T) {
			r := Resolver{Trusted: mustPrefixes(t, tc.trusted...)}
			peer := netip.MustParseAddr(tc.peer)
			if got := r.ClientIP(peer, tc.xff); got.String() != tc.want {
				t.Fatalf("ClientIP = %s, want %s", got, tc.want)
			}
			if got := r.ForwardedFor(peer, tc.xff); got != tc.fwd {
				t.Fatalf("ForwardedFor = %q, want %q", got, tc.fwd)
			}
		})
	}
}

func TestIPKey(t *testing.T) {
	tests := []struct {
		bits int
		ip   string
		want string
	}{
		{0, "192.0.2.1", "192.0.2.1"},
		{0, "::ffff:192.0.2.1", "192.0.2.1"},
		{0, "2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"},
		{0, "2001:db8:1:2:bbbb::2", "2001:db8:1:2::/64"},
		{48, "2001:db8:1:2::1", "2001:db8:1::/48"},
		{128, "2001:db8::1", "2001:db8::1/128"},
		{0, "fe80::1%eth0", "fe80::/64"},
	}
	for _, tc := range tests {
		if got := (Resolver{IPv6Prefix: tc.bits}).Key(netip.MustParseAddr(tc.ip)); got != tc.want {
			t.Errorf("Key(%s)/%d = %q, want %q", tc.ip, tc.bits, got, tc.want)
		}
	}
	if got := (Resolver{}).Key(netip.Addr{}); got != "invalid" {
		t.Errorf("invalid addr key %q", got)
	}
}

func TestParsePrefixes(t *testing.T) {
	got, err := ParsePrefixes([]string{"10.0.0.1/8", "192.0.2.7", " 2001:db8::/32 ", "::1"})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"10.0.0.0/8", "192.0.2.7/32", "2001:db8::/32", "::1/128"}
	for i := range want {
		if got[i].String() != want[i] {
			t.Fatalf("got %v, want %v", got, want)
		}
	}
	for _, bad := range []string{"10.0.0.0/33", "nope", "", "fe80::1%eth0"} {
		_, err := ParsePrefixes([]string{"10.0.0.0/8", bad})
		if err == nil || !strings.Contains(err.Error(), "trusted proxy \""+bad+"\"") {
			t.Errorf("%q: err %v", bad, err)
		}
	}
}

func FuzzXFF(f *testing.F) {
	for _, tc := range xffCases {
		f.Add(tc.peer, strings.Join(tc.xff, "\n"))
	}
	r := Resolver{Trusted: mustPrefixes(f, "10.0.0.0/8", "fd00::/8")}
	f.Fuzz(func(t *testing.T, peerS, xffS string) {
		peer, err := netip.ParseAddr(peerS)
		if err != nil {
			return
		}
		xff := strings.Split(xffS, "\n")
		got := r.ClientIP(peer, xff)
		if !r.IsTrusted(peer) && got != peer.Unmap().WithZone("") {
			t.Fatalf("untrusted peer %s resolved to %s", peer, got)
		}
		// A forged prefix to the left of the list never changes the answer
		// once an untrusted hop exists to its right.
		forged := append([]string{"6.6.6.6, 10.1.2.3"}, xff...)
		if got2 := r.ClientIP(peer, forged); !r.IsTrusted(got) && got2 != got {
			t.Fatalf("forged prefix moved %s to %s", got, got2)
		}
		_ = r.Key(got)
		_ = r.ForwardedFor(peer, xff)
	})
}
