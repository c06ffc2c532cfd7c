package proxy

import (
	"context"
	"net"
	"os"
	"runtime"
	"runtime/pprof"
	"testing"
	"time"

	"github.com/gobwas/ws"
)

// BenchmarkIdlePair reports the Go heap held by an idle proxied connection
// (client and upstream sockets, parked), measured after a GC: the part of
// the per-connection RSS the gate controls. The in-process backend and
// clients count too; to leave the backend out, run one elsewhere and name
// it in WSGATE_IDLE_UPSTREAM (http://host:port). WSGATE_IDLE_HEAPPROFILE
// names a file for a heap profile taken at the measurement.
func BenchmarkIdlePair(b *testing.B) {
	const n = 1000
	up := os.Getenv("WSGATE_IDLE_UPSTREAM")
	if up == "" {
		up = backend(b).URL
	}
	g := newGate(b, up, func(c *Config) { c.PingInterval = 30 * time.Second })
	url := wsURL(g.Server, "/echo")
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	conns := make([]net.Conn, 0, n)
	for range n {
		c, _, _, err := ws.Dial(context.Background(), url)
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
