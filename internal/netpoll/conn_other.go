//go:build !linux

package netpoll

import (
	"context"
	"net"
	"net/netip"
	"time"
)

// Conn is not available here: New fails, so there is no Poller to dial
// with.
type Conn struct{ net.Conn }

// DialTCP fails here; callers dial with net.Dialer.
func (p *Poller) DialTCP(context.Context, netip.AddrPort, time.Duration) (*Conn, error) {
	return nil, ErrUnsupported
}

// Handover and FD are never called here: no Conn is ever made.
func (c *Conn) Handover(*Desc) {}
func (c *Conn) FD() int        { return -1 }
