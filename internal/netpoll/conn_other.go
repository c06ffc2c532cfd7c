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

// Listener is not available here.
type Listener struct{ net.Listener }

// Listen fails here; callers serve with net/http.
func (p *Poller) Listen(*net.TCPListener, time.Duration) (*Listener, error) {
	return nil, ErrUnsupported
}

func (l *Listener) Accept() (*Conn, error) { return nil, ErrUnsupported }

// Handover, FD, Release and CloseWrite are never called here: no Conn is
// ever made.
func (c *Conn) Handover(*Desc) {}
func (c *Conn) FD() int        { return -1 }

func (c *Conn) Release() (net.Conn, error) { return nil, ErrUnsupported }
func (c *Conn) CloseWrite() error          { return ErrUnsupported }
