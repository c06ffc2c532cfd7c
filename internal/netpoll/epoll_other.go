//go:build !linux

package netpoll

import "net"

// impl is empty where there is no poller: New fails with ErrUnsupported.
type impl struct{}

func (p *Poller) start() error    { return ErrUnsupported }
func (p *Poller) stop() error     { return nil }
func (p *Poller) arm(*Desc) error { return ErrUnsupported }
func (p *Poller) forget(*Desc)    {}

func (p *Poller) ready(batch []*Desc) ([]*Desc, error) { return batch, ErrUnsupported }

// Own is not available here: connections stay with the runtime.
func Own(net.Conn) (int, error) { return -1, ErrUnsupported }

// Shutdown and Close are never called here: nothing is owned.
func Shutdown(int) {}
func Close(int)    {}
