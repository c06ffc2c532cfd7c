package clientip

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"time"
)

// DefaultProxyHeaderTimeout bounds the wait for a PROXY header when
// NewProxyListener is given no timeout.
const DefaultProxyHeaderTimeout = 5 * time.Second

var (
	proxyV1Prefix = []byte("PROXY ")
	proxyV2Sig    = []byte("\r\n\r\n\x00\r\nQUIT\n")

	// ErrProxyHeader is wrapped by every malformed PROXY header error.
	ErrProxyHeader = errors.New("invalid PROXY protocol header")
)

const proxyV1MaxLen = 107 // including CRLF, per the spec section 2.1

// NewProxyListener wraps inner so that connections from trusted peers may
// start with a PROXY protocol v1 or v2 header, whose source address then
// becomes the conn's RemoteAddr. The header is optional from trusted peers
// and never parsed from others: an untrusted peer that sends one gets a
// plain connection, which then fails HTTP parsing, so it cannot spoof its
// address. The header is read lazily, on the conn's first Read, RemoteAddr
// or LocalAddr, so Accept never waits on a slow client; headerTimeout
// (0 = DefaultProxyHeaderTimeout) bounds that read.
func NewProxyListener(inner net.Listener, trusted []netip.Prefix, headerTimeout time.Duration) net.Listener {
	if headerTimeout <= 0 {
		headerTimeout = DefaultProxyHeaderTimeout
	}
	return &proxyListener{Listener: inner, r: Resolver{Trusted: trusted}, timeout: headerTimeout}
}

type proxyListener struct {
	net.Listener
	r       Resolver
	timeout time.Duration
}

func (l *proxyListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	peer, ok := addrOf(c.RemoteAddr())
	if !ok || !l.r.IsTrusted(peer) {
		return c, nil
	}
	return &proxyConn{Conn: c, timeout: l.timeout}, nil
}

func addrOf(a net.Addr) (netip.Addr, bool) {
	if t, ok := a.(*net.TCPAddr); ok {
		return t.AddrPort().Addr().Unmap(), true
	}
	if a == nil {
		return netip.Addr{}, false
	}
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		return netip.Addr{}, false
	}
	return ap.Addr().Unmap(), true
}

// proxyConn is a conn from a trusted peer, whose PROXY header (if any) is
// consumed once before the first byte is handed to the reader.
type proxyConn struct {
	net.Conn
	timeout time.Duration

	once   sync.Once
	br     *bufio.Reader
	src    net.Addr // from the header; nil = the peer
	dst    net.Addr
	hdrErr error

	dmu          sync.Mutex
	userDeadline time.Time // the caller's read deadline, restored after the header
	inHeader     bool
}

func (c *proxyConn) init() {
	c.once.Do(func() {
		c.dmu.Lock()
		c.inHeader = true
		d := time.Now().Add(c.timeout)
		if !c.userDeadline.IsZero() && c.userDeadline.Before(d) {
			d = c.userDeadline
		}
		_ = c.Conn.SetReadDeadline(d)
		c.dmu.Unlock()

		c.br = bufio.NewReaderSize(c.Conn, 256)
		src, dst, err := readProxyHeader(c.br)
		c.src, c.dst, c.hdrErr = src, dst, err

		c.dmu.Lock()
		c.inHeader = false
		_ = c.Conn.SetReadDeadline(c.userDeadline)
		c.dmu.Unlock()
	})
}

func (c *proxyConn) Read(p []byte) (int, error) {
	c.init()
	if c.hdrErr != nil {
		return 0, c.hdrErr
	}
	return c.br.Read(p)
}

func (c *proxyConn) RemoteAddr() net.Addr {
	c.init()
	if c.src != nil {
		return c.src
	}
	return c.Conn.RemoteAddr()
}

func (c *proxyConn) LocalAddr() net.Addr {
	c.init()
	if c.dst != nil {
		return c.dst
	}
	return c.Conn.LocalAddr()
}

func (c *proxyConn) SetReadDeadline(t time.Time) error {
	c.dmu.Lock()
	defer c.dmu.Unlock()
	c.userDeadline = t
	if c.inHeader {
		return nil
	}
	return c.Conn.SetReadDeadline(t)
}

func (c *proxyConn) SetDeadline(t time.Time) error {
	if err := c.Conn.SetWriteDeadline(t); err != nil {
		return err
	}
	return c.SetReadDeadline(t)
}

// readProxyHeader consumes a PROXY v1 or v2 header from br if the stream
// starts with one; src and dst are nil when there is none or when it says
// LOCAL/UNKNOWN. Non-header bytes are left in br.
func readProxyHeader(br *bufio.Reader) (src, dst net.Addr, err error) {
	ok, err := peekPrefix(br, proxyV1Prefix)
	if err != nil {
		return nil, nil, err
	}
	if ok {
		return readProxyV1(br)
	}
	if ok, err = peekPrefix(br, proxyV2Sig); err != nil {
		return nil, nil, err
	}
	if ok {
		return readProxyV2(br)
	}
	return nil, nil, nil
}

// peekPrefix reports whether the stream starts with prefix, reading only as
// far as needed to tell (a plain request starting "POST" is told apart at
// its second byte). An EOF before a decision means no header.
func peekPrefix(br *bufio.Reader, prefix []byte) (bool, error) {
	for i := 1; i <= len(prefix); i++ {
		b, err := br.Peek(i)
		if len(b) < i {
			if errors.Is(err, io.EOF) {
				return false, nil
			}
			return false, err
		}
		if b[i-1] != prefix[i-1] {
			return false, nil
		}
	}
	return true, nil
}

func readProxyV1(br *bufio.Reader) (src, dst net.Addr, err error) {
	// ReadSlice returns as soon as the LF arrives: a short header followed by
	// nothing (the client waits for the answer) must not block.
	line, err := br.ReadSlice('\n')
	switch {
	case err == nil:
	case errors.Is(err, bufio.ErrBufferFull), errors.Is(err, io.EOF):
		return nil, nil, fmt.Errorf("%w: v1 line not terminated", ErrProxyHeader)
	default:
		return nil, nil, err
	}
	if len(line) > proxyV1MaxLen || len(line) < 2 || line[len(line)-2] != '\r' {
		return nil, nil, fmt.Errorf("%w: v1 line longer than %d bytes or without CRLF", ErrProxyHeader, proxyV1MaxLen)
	}
	return parseProxyV1(line[:len(line)-2])
}

// parseProxyV1 parses "PROXY TCP4 src dst sport dport" without the CRLF.
func parseProxyV1(line []byte) (src, dst net.Addr, err error) {
	f := bytes.Split(line, []byte(" "))
	if len(f) < 2 || string(f[0]) != "PROXY" {
		return nil, nil, fmt.Errorf("%w: v1 syntax", ErrProxyHeader)
	}
	switch string(f[1]) {
	case "UNKNOWN":
		return nil, nil, nil
	case "TCP4", "TCP6":
	default:
		return nil, nil, fmt.Errorf("%w: v1 protocol not TCP4/TCP6/UNKNOWN", ErrProxyHeader)
	}
	if len(f) != 6 {
		return nil, nil, fmt.Errorf("%w: v1 syntax", ErrProxyHeader)
	}
	sa, err1 := netip.ParseAddr(string(f[2]))
	da, err2 := netip.ParseAddr(string(f[3]))
	sp, err3 := parsePort(f[4])
	dp, err4 := parsePort(f[5])
	if err := errors.Join(err1, err2, err3, err4); err != nil {
		return nil, nil, fmt.Errorf("%w: v1 address or port", ErrProxyHeader)
	}
	v4 := string(f[1]) == "TCP4"
	if sa.Zone() != "" || da.Zone() != "" || sa.Is4() != v4 || da.Is4() != v4 {
		return nil, nil, fmt.Errorf("%w: v1 address family", ErrProxyHeader)
	}
	return net.TCPAddrFromAddrPort(netip.AddrPortFrom(sa, sp)),
		net.TCPAddrFromAddrPort(netip.AddrPortFrom(da, dp)), nil
}

func parsePort(b []byte) (uint16, error) {
	if len(b) == 0 || len(b) > 5 || (len(b) > 1 && b[0] == '0') {
		return 0, errors.New("bad port")
	}
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, errors.New("bad port")
		}
	}
	n, err := strconv.ParseUint(string(b), 10, 16)
	return uint16(n), err
}

func readProxyV2(br *bufio.Reader) (src, dst net.Addr, err error) {
	hdr, err := br.Peek(16)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: v2 header: %w", ErrProxyHeader, err)
	}
	n := int(binary.BigEndian.Uint16(hdr[14:16]))
	body := make([]byte, 16+n)
	if _, err := io.ReadFull(br, body); err != nil {
		return nil, nil, fmt.Errorf("%w: v2 body: %w", ErrProxyHeader, err)
	}
	return parseProxyV2(body)
}

// parseProxyV2 parses a complete v2 header (signature, 4 fixed bytes,
// addresses and TLVs, which are ignored).
func parseProxyV2(b []byte) (src, dst net.Addr, err error) {
	if len(b) < 16 || !bytes.Equal(b[:12], proxyV2Sig) {
		return nil, nil, fmt.Errorf("%w: v2 signature", ErrProxyHeader)
	}
	if b[12]>>4 != 2 {
		return nil, nil, fmt.Errorf("%w: v2 version %d", ErrProxyHeader, b[12]>>4)
	}
	body := b[16:]
	if int(binary.BigEndian.Uint16(b[14:16])) != len(body) {
		return nil, nil, fmt.Errorf("%w: v2 length", ErrProxyHeader)
	}
	switch b[12] & 0x0f {
	case 0x0: // LOCAL: the proxy's own connection (health check)
		return nil, nil, nil
	case 0x1: // PROXY
	default:
		return nil, nil, fmt.Errorf("%w: v2 command", ErrProxyHeader)
	}
	var alen int
	switch b[13] >> 4 {
	case 0x0, 0x3: // AF_UNSPEC, AF_UNIX: no IP to report
		return nil, nil, nil
	case 0x1:
		alen = 4
	case 0x2:
		alen = 16
	default:
		return nil, nil, fmt.Errorf("%w: v2 address family", ErrProxyHeader)
	}
	if len(body) < 2*alen+4 {
		return nil, nil, fmt.Errorf("%w: v2 address block too short", ErrProxyHeader)
	}
	sa, _ := netip.AddrFromSlice(body[:alen])
	da, _ := netip.AddrFromSlice(body[alen : 2*alen])
	sp := binary.BigEndian.Uint16(body[2*alen:])
	dp := binary.BigEndian.Uint16(body[2*alen+2:])
	return net.TCPAddrFromAddrPort(netip.AddrPortFrom(sa, sp)),
		net.TCPAddrFromAddrPort(netip.AddrPortFrom(da, dp)), nil
}
