//go:build e2e

package e2e

// The client-IP warning through the built binary: with no --trusted-proxies, a gate whose every
// connection comes from one private address (as behind an ingress) says so, once.

import (
	"io"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// privateAddr returns an address of this machine that netip calls private (RFC 1918, RFC 4193),
// or skips the test.
func privateAddr(t *testing.T) netip.Addr {
	t.Helper()
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Skip(err)
	}
	for _, a := range addrs {
		if p, err := netip.ParsePrefix(a.String()); err == nil && p.Addr().IsPrivate() {
			return p.Addr()
		}
	}
	t.Skip("this machine has no private address to connect from")
	return netip.Addr{}
}

func TestSinglePrivatePeerWarning(t *testing.T) {
	t.Parallel()
	addr := privateAddr(t)
	be := startGoBackend(t)
	const warning = "every connection so far came from one private address"
	for _, tc := range []struct {
		name    string
		args    []string
		warning int
	}{
		{name: "no trusted proxy", warning: 1},
		{name: "trusted proxy", args: []string{"--trusted-proxies", addr.String()}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			listen := net.JoinHostPort(addr.String(), strconv.Itoa(freePort(t)))
			g := startGate(t, slices.Concat([]string{"--upstream", be, "--listen", listen,
				"--user-rate", "0", "--ip-rate", "0"}, noConnRules, tc.args)...)
			client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true,
				DialContext: (&net.Dialer{LocalAddr: &net.TCPAddr{IP: addr.AsSlice()}}).DialContext}}
			defer client.CloseIdleConnections()
			for i := range 60 {
				resp, err := client.Get("http://" + listen + "/hello")
				if err != nil {
					t.Fatalf("request %d: %v", i, err)
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					t.Fatalf("request %d: %s", i, resp.Status)
				}
			}
			if n := strings.Count(g.Output(), warning); n != tc.warning {
				t.Fatalf("the gate warned %d times, want %d:\n%s", n, tc.warning, tail(g.Output(), 4000))
			}
		})
	}
}
