package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"
)

// respConn is the smallest RESP2 client the harness needs: INFO, SCRIPT LOAD and EVALSHA.
type respConn struct {
	c  net.Conn
	br *bufio.Reader
}

func dialRedis(addr string) (*respConn, error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return nil, fmt.Errorf("redis: %w", err)
	}
	return &respConn{c: c, br: bufio.NewReader(c)}, nil
}

func (r *respConn) Close() error { return r.c.Close() }

// do sends one command and returns its reply as a string (bulk, simple or integer).
func (r *respConn) do(args ...string) (string, error) {
	_ = r.c.SetDeadline(time.Now().Add(5 * time.Second))
	var b []byte
	b = fmt.Appendf(b, "*%d\r\n", len(args))
	for _, a := range args {
		b = fmt.Appendf(b, "$%d\r\n%s\r\n", len(a), a)
	}
	if _, err := r.c.Write(b); err != nil {
		return "", fmt.Errorf("redis: %w", err)
	}
	line, err := r.br.ReadString('\n')
	if err != nil {
		return "", fmt.Errorf("redis: %w", err)
	}
	line = strings.TrimRight(line, "\r\n")
	if line == "" {
		return "", errors.New("redis: empty reply")
	}
	switch line[0] {
	case '+', ':':
		return line[1:], nil
	case '-':
		return "", fmt.Errorf("redis: %s", line[1:])
	case '$':
		n, err := strconv.Atoi(line[1:])
		if err != nil || n < 0 {
			return "", fmt.Errorf("redis: bad bulk length %q", line)
		}
		p := make([]byte, n+2)
		if _, err := io.ReadFull(r.br, p); err != nil {
			return "", fmt.Errorf("redis: %w", err)
		}
		return string(p[:n]), nil
	}
	return "", fmt.Errorf("redis: unexpected reply %q", line)
}

// redisCounts are requests Redis has served, from INFO commandstats, by kind. Only commands
// that a client sends and the limiter's scripts never call are counted: INFO commandstats also
// counts every command a script runs, so counting everything would count one EVALSHA as five.
// MULTI is left out: the commands rueidis queues in it for client-side caching are counted.
type redisCounts struct {
	take  int64 // EVAL, EVALSHA: a decision that takes from a budget (or a lease of one)
	check int64 // CLIENT CACHING: a block check (a cached PTTL) that missed rueidis's client-side cache
	other int64 // ZREM (a connection ended), PING (health), FCALL

	messages int64 // round trips over which a difference of two readings was taken; 0 otherwise
}

func (c redisCounts) total() int64 { return c.take + c.check + c.other }

// cmdStats is INFO commandstats by command ("evalsha", "client|caching"), the harness's own
// INFO calls left out.
type cmdStats map[string]cmdStat

// cmdStat is one command's line of INFO commandstats.
type cmdStat struct {
	calls int64
	usec  int64 // time Redis spent in the command, scripts' commands included for EVALSHA
}

// sub returns what Redis served between reading d and reading c.
func (c cmdStats) sub(d cmdStats) cmdStats {
	out := cmdStats{}
	for k, v := range c {
		if n := v.calls - d[k].calls; n != 0 {
			out[k] = cmdStat{calls: n, usec: v.usec - d[k].usec}
		}
	}
	return out
}

// counts sorts the calls into the kinds of redisCounts.
func (c cmdStats) counts() redisCounts {
	var r redisCounts
	for name, v := range c {
		n := v.calls
		switch name {
		case "eval", "evalsha":
			r.take += n
		case "client|caching":
			// rueidis sends one with each read it caches; the scripts' own
			// PTTL calls are counted as PTTL, so that cannot be the measure.
			r.check += n
		case "zrem", "ping", "fcall", "fcall_ro":
			r.other += n
		}
	}
	return r
}

// commandStats reads INFO commandstats from the server at addr.
func commandStats(addr string) (cmdStats, error) {
	r, err := dialRedis(addr)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	info, err := r.do("INFO", "commandstats")
	if err != nil {
		return nil, err
	}
	c := cmdStats{}
	for _, line := range strings.Split(info, "\n") {
		// cmdstat_evalsha:calls=3,usec=183,usec_per_call=61.00,...
		name, rest, ok := strings.Cut(strings.TrimSpace(line), ":calls=")
		if !ok {
			continue
		}
		v, rest, _ := strings.Cut(rest, ",")
		var st cmdStat
		st.calls, _ = strconv.ParseInt(v, 10, 64)
		if u, ok := strings.CutPrefix(rest, "usec="); ok {
			u, _, _ = strings.Cut(u, ",")
			st.usec, _ = strconv.ParseInt(u, 10, 64)
		}
		if name = strings.TrimPrefix(name, "cmdstat_"); name != "info" {
			c[name] = st
		}
	}
	return c, nil
}

// evalshaRTT times n sequential EVALSHA round trips of a one-key INCR+PEXPIRE script, the
// shape of the limiter's call, and returns p50 and p99 in microseconds.
func evalshaRTT(addr string, n int) (s2Result, error) {
	r, err := dialRedis(addr)
	if err != nil {
		return s2Result{}, err
	}
	defer r.Close()
	sha, err := r.do("SCRIPT", "LOAD", "local n = redis.call('INCR', KEYS[1]) redis.call('PEXPIRE', KEYS[1], 10000) return n")
	if err != nil {
		return s2Result{}, err
	}
	lat := make([]float64, 0, n)
	for i := range n + 100 {
		t0 := time.Now()
		if _, err := r.do("EVALSHA", sha, "1", "bench:rtt"); err != nil {
			return s2Result{}, err
		}
		if i >= 100 {
			lat = append(lat, float64(time.Since(t0).Nanoseconds())/1e3)
		}
	}
	return s2Result{p50: percentile(lat, 50), p99: percentile(lat, 99)}, nil
}
