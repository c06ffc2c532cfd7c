package limit

import (
	"net"
	"sync"
	"testing"
	"time"
)

// faultProxy is a TCP proxy between a Limiter and a real redis-server that
// injects faults: latency on replies, resets, a blackhole (bytes held, not
// lost, as TCP holds them across a partition) and a listener that is down.
type faultProxy struct {
	tb     testing.TB
	addr   string // where the Limiter dials
	target string // the redis-server

	mu        sync.Mutex
	ln        net.Listener          // nil while down
	pairs     map[net.Conn]net.Conn // client conn -> its redis conn
	latency   time.Duration
	held      int // reply chunks waiting for their latency
	blackhole bool
	resume    chan struct{} // closed when the blackhole ends
	wg        sync.WaitGroup
}

// startProxy listens on a free port toward target and tears everything
// down in tb.Cleanup.
func startProxy(tb testing.TB, target string) *faultProxy {
	tb.Helper()
	p := &faultProxy{tb: tb, target: target, pairs: make(map[net.Conn]net.Conn), resume: make(chan struct{})}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	p.addr = ln.Addr().String()
	p.serve(ln)
	tb.Cleanup(func() { p.down(); p.wg.Wait() })
	return p
}

func (p *faultProxy) url() string { return "redis://" + p.addr }

func (p *faultProxy) serve(ln net.Listener) {
	p.mu.Lock()
	p.ln = ln
	p.mu.Unlock()
	p.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			up, err := net.DialTimeout("tcp", p.target, time.Second)
			if err != nil {
				c.Close()
				continue
			}
			p.mu.Lock()
			if p.ln != ln { // went down meanwhile
				p.mu.Unlock()
				c.Close()
				up.Close()
				return
			}
			p.pairs[c] = up
			p.mu.Unlock()
			p.wg.Go(func() { p.pipe(c, up, false) })
			p.wg.Go(func() { p.pipe(up, c, true) })
		}
	})
}

// pipe copies src to dst until either fails, then closes both. Replies
// are held for the latency from when they were read, in order: latency, not
// a bandwidth cap.
func (p *faultProxy) pipe(src, dst net.Conn, reply bool) {
	defer p.drop(src, dst)
	type chunk struct {
		b   []byte
		due time.Time
	}
	out := make(chan chunk, 1024)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for c := range out {
			time.Sleep(time.Until(c.due))
			_, err := dst.Write(c.b)
			if reply {
				p.mu.Lock()
				p.held--
				p.mu.Unlock()
			}
			if err != nil {
				src.Close()
				for range out {
					if reply {
						p.mu.Lock()
						p.held--
						p.mu.Unlock()
					}
				}
				return
			}
		}
	}()
	defer func() { close(out); <-done }()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			p.mu.Lock()
			lat, hole, resume := p.latency, p.blackhole, p.resume
			if reply {
				p.held++
			}
			p.mu.Unlock()
			if hole {
				<-resume
			}
			c := chunk{b: append([]byte(nil), buf[:n]...), due: time.Now()}
			if reply {
				c.due = c.due.Add(lat)
			}
			out <- c
		}
		if err != nil {
			return
		}
	}
}

func (p *faultProxy) drop(a, b net.Conn) {
	p.mu.Lock()
	delete(p.pairs, a)
	delete(p.pairs, b)
	p.mu.Unlock()
	a.Close()
	b.Close()
}

// open returns the client connections the proxy holds open.
func (p *faultProxy) open() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.pairs)
}

// inFlight returns the reply chunks the proxy holds for their latency.
func (p *faultProxy) inFlight() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.held
}

// setLatency delays every reply chunk by d.
func (p *faultProxy) setLatency(d time.Duration) {
	p.mu.Lock()
	p.latency = d
	p.mu.Unlock()
}

// setBlackhole holds every byte in flight (on) or lets them go (off).
func (p *faultProxy) setBlackhole(on bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if on == p.blackhole {
		return
	}
	p.blackhole = on
	if on {
		p.resume = make(chan struct{})
	} else {
		close(p.resume)
	}
}

// reset closes every connection with an RST; the listener stays up.
func (p *faultProxy) reset() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.pairs {
		if tc, ok := c.(*net.TCPConn); ok {
			_ = tc.SetLinger(0)
		}
		c.Close()
	}
}

// down closes the listener and every connection: Redis is unreachable.
func (p *faultProxy) down() {
	p.mu.Lock()
	ln := p.ln
	p.ln = nil
	p.mu.Unlock()
	if ln != nil {
		ln.Close()
	}
	p.setBlackhole(false)
	p.reset()
}

// up listens again on the same address.
func (p *faultProxy) up() {
	p.tb.Helper()
	ln, err := net.Listen("tcp", p.addr)
	if err != nil {
		p.tb.Fatalf("proxy up again on %s: %v", p.addr, err)
	}
	p.serve(ln)
}
