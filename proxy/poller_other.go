//go:build !linux

package proxy

import "errors"

// poller is only built on Linux; elsewhere a direction never parks and
// keeps its goroutine blocked in Read.
type poller struct{}

func newPoller() (*poller, error)        { return nil, errors.New("proxy: no poller on this platform") }
func (pl *poller) close()                {}
func (pl *poller) park(*direction) error { return errNoFd }
func (pl *poller) forget(*direction)     {}
func connFd(any) int                     { return -1 }

var errNoFd = errors.New("proxy: no poller on this platform")
