//go:build !linux

package netpoll

// impl is empty where there is no poller: New fails with ErrUnsupported.
type impl struct{}

func (p *Poller) start() error    { return ErrUnsupported }
func (p *Poller) stop() error     { return nil }
func (p *Poller) arm(*Desc) error { return ErrUnsupported }
func (p *Poller) forget(*Desc)    {}
