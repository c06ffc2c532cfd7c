package proxy

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"testing"
	"time"
	"unsafe"

	"github.com/gobwas/ws"
	"github.com/lestrrat-go/jwx/v2/jwa"
	"github.com/lestrrat-go/jwx/v2/jwt"

	"github.com/holo/wsgate/auth"
	"github.com/holo/wsgate/frames"
	"github.com/holo/wsgate/limit"
)

// BenchmarkIdlePair reports the Go heap held by an idle proxied connection
// (client and upstream sockets, parked), measured after a GC: the part of
// the per-connection RSS the gate controls. The in-process backend and
// clients count too; to leave the backend out, run one elsewhere and name
// it in WSGATE_IDLE_UPSTREAM (http://host:port). WSGATE_IDLE_HEAPPROFILE
// names a file for a heap profile taken at the measurement.
//
// "full" runs the gate as make bench does: every connection with a JWT of
// its own subject (HS256), and the four rules on the memory store, so that
// each connection also holds a verified-token cache entry and limiter state.
func BenchmarkIdlePair(b *testing.B) {
	b.Run("bare", func(b *testing.B) { benchIdlePair(b, false) })
	b.Run("full", func(b *testing.B) { benchIdlePair(b, true) })
}

func benchIdlePair(b *testing.B, full bool) {
	const n = 1000
	if os.Getenv("WSGATE_IDLE_HEAPPROFILE") != "" {
		defer func(rate int) { runtime.MemProfileRate = rate }(runtime.MemProfileRate)
		runtime.MemProfileRate = 1 // every allocation, for an exact profile
	}
	up := os.Getenv("WSGATE_IDLE_UPSTREAM")
	if up == "" {
		up = backend(b).URL
	}
	secret := []byte("idle-pair-benchmark-secret-0123456789")
	mod := func(c *Config) { c.PingInterval = 30 * time.Second }
	if full {
		file := filepath.Join(b.TempDir(), "secret")
		if err := os.WriteFile(file, secret, 0o600); err != nil {
			b.Fatal(err)
		}
		v, err := auth.NewVerifier(context.Background(), auth.Config{HMACSecretFiles: []string{file}})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { v.Close() })
		lim, err := limit.New(limit.Config{Rules: limit.Rules{
			UserMessages: limit.Rule{Limit: 100_000_000, Window: 10 * time.Second, Block: 5 * time.Second},
			IPMessages:   limit.Rule{Limit: 100_000_000, Window: 10 * time.Second},
			UserConns:    limit.Rule{Limit: 1_000_000, Window: time.Minute},
			IPConns:      limit.Rule{Limit: 1_000_000, Window: time.Minute},
		}})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { lim.Close() })
		mod = func(c *Config) { c.PingInterval = 30 * time.Second; c.Auth = v; c.Limiter = lim }
	}
	g := newGate(b, up, mod)
	url := wsURL(g.Server, "/echo")
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	conns := make([]net.Conn, 0, n)
	for i := range n {
		d := ws.Dialer{}
		if full {
			tok, err := jwt.NewBuilder().Subject(fmt.Sprint("idle-", i)).Expiration(time.Now().Add(time.Hour)).Build()
			if err != nil {
				b.Fatal(err)
			}
			signed, err := jwt.Sign(tok, jwt.WithKey(jwa.HS256, secret))
			if err != nil {
				b.Fatal(err)
			}
			d.Header = ws.HandshakeHeaderHTTP(http.Header{"Authorization": {"Bearer " + string(signed)}})
		}
		c, _, _, err := d.Dial(context.Background(), url)
		if err != nil {
			b.Fatal(err)
		}
		conns = append(conns, c)
	}
	waitFor(b, func() bool { return g.proxy.Active() == n })
	time.Sleep(100 * time.Millisecond)
	runtime.GC()
	runtime.ReadMemStats(&after)
	if f := os.Getenv("WSGATE_IDLE_HEAPPROFILE"); f != "" {
		out, _ := os.Create(f)
		_ = pprof.WriteHeapProfile(out)
		out.Close()
	}
	b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/n, "heap-B/pair")
	b.ReportMetric(float64(after.StackInuse-before.StackInuse)/n, "stack-B/pair")
	for _, c := range conns {
		c.Close()
	}
}

// TestPairSize keeps a pair within the 768-byte allocation size class:
// every proxied connection holds one, idle or not, and the next class up is
// 896 bytes. Grow it knowingly (and update BENCHMARKS.md's idle figures);
// what only logs and the admin API read belongs in connInfo.
func TestPairSize(t *testing.T) {
	if got := unsafe.Sizeof(pair{}); got > 768 {
		t.Fatalf("pair is %d bytes, want at most 768 (direction %d, frames.Stream %d, frames.Reader %d)",
			got, unsafe.Sizeof(direction{}), unsafe.Sizeof(frames.Stream{}), unsafe.Sizeof(frames.Reader{}))
	}
}
