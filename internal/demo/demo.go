// Package demo provides the backend wsgate's examples put behind the gate: a
// WebSocket echo and a page that drives it from a browser, so the effect of a
// limit can be seen without writing a client.
package demo

import (
	"bytes"
	"context"
	_ "embed"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"
)

// maxMessageSize is the largest message the echo accepts, in bytes, counting
// all fragments of a message together. A bigger message closes the connection
// with status 1009 (RFC 6455 section 7.4.1).
const maxMessageSize = 1 << 20

// keepBuffer is the capacity up to which a connection keeps its read buffer
// between messages; one big message should not pin a megabyte for the life of
// an otherwise quiet connection.
const keepBuffer = 64 << 10

// lingerTimeout bounds how long a failed connection waits for the peer's
// Close and FIN before the socket is closed anyway.
const lingerTimeout = time.Second

//go:embed index.html
var page []byte

// Handler returns the demo backend: a WebSocket echo on every path except "/"
// (the examples use /ws) and, at "/", a single HTML page.
//
// The echo sends text and binary messages back as they came, answers pings and
// returns the Close of a peer that closes. Messages over 1 MiB close
// the connection with 1009, invalid UTF-8 in text with 1007, and protocol
// errors with 1002. Each connection is served on its request's goroutine, which
// returns when the connection ends or the request's context is done.
//
// A nil logger discards the log.
func Handler(logger *slog.Logger) http.Handler {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &handler{logger: logger}
}

type handler struct {
	logger *slog.Logger
}

func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch r.URL.Path {
	case "/":
		servePage(w, r)
		return
	case "/favicon.ico":
		// Browsers ask for it whatever the page says; without it the
		// request would be logged as a failed upgrade.
		w.Header().Set("Content-Type", "image/svg+xml")
		w.Header().Set("Cache-Control", "max-age=86400")
		w.Write(favicon)
		return
	}
	h.serveEcho(w, r)
}

// favicon is a gate: two posts and a bar.
var favicon = []byte(`<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16">` +
	`<rect x="2" y="2" width="3" height="12" fill="#2f6fde"/><rect x="11" y="2" width="3" height="12" fill="#2f6fde"/>` +
	`<rect x="5" y="6" width="6" height="2" fill="#b35c00"/></svg>`)

func servePage(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, http.StatusText(http.StatusMethodNotAllowed), http.StatusMethodNotAllowed)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-cache")
	if r.Method == http.MethodHead {
		return
	}
	w.Write(page)
}

func (h *handler) serveEcho(w http.ResponseWriter, r *http.Request) {
	log := h.logger.With("remote", r.RemoteAddr, "path", r.URL.Path)
	conn, rw, _, err := ws.UpgradeHTTP(r, w)
	if err != nil {
		// The upgrader hijacks before it checks the handshake, so a rejected
		// request still leaves a connection to close once the answer is out.
		if conn != nil {
			conn.Close()
		}
		log.Info("websocket upgrade failed", "err", err)
		return
	}
	defer conn.Close()

	// A hijacked connection is no longer tracked by the server, so the
	// request's context (derived from the server's BaseContext) is the only
	// way to end it from outside.
	stop := context.AfterFunc(r.Context(), func() { conn.Close() })
	defer stop()

	log.Debug("websocket connected")
	// The hijacked reader may already hold frames the client sent right
	// after its handshake, so frames are read through it.
	err = echo(conn, rw.Reader)
	log.Debug("websocket closed", "err", err)
}

// echo reads messages from src and writes each back to conn until the
// connection ends. It returns the error that ended it.
func echo(conn net.Conn, src io.Reader) error {
	control := wsutil.ControlFrameHandler(conn, ws.StateServerSide)
	var closeSent bool
	onControl := func(hdr ws.Header, r io.Reader) error {
		// The handler answers a Close, also an invalid one (with 1002), and
		// RFC 6455 section 5.5.1 allows one Close per endpoint.
		closeSent = closeSent || hdr.OpCode == ws.OpClose
		return control(hdr, r)
	}
	rd := &wsutil.Reader{
		Source:         src,
		State:          ws.StateServerSide,
		CheckUTF8:      true,
		MaxMessageSize: maxMessageSize,
		OnIntermediate: onControl,
	}
	var buf bytes.Buffer
	for {
		err := readAndEcho(conn, rd, onControl, &buf)
		if err == nil {
			continue
		}
		if !closeSent {
			fail(conn, err)
		}
		return err
	}
}

// readAndEcho reads one frame from rd: a control frame goes to onControl, a
// data message is read whole into buf and written back to conn.
func readAndEcho(conn net.Conn, rd *wsutil.Reader, onControl wsutil.FrameHandlerFunc, buf *bytes.Buffer) error {
	hdr, err := rd.NextFrame()
	if err != nil {
		return err
	}
	if hdr.OpCode.IsControl() {
		return onControl(hdr, rd)
	}
	if buf.Cap() > keepBuffer {
		*buf = bytes.Buffer{}
	}
	buf.Reset()
	// The Reader enforces maxMessageSize on declared lengths before any
	// payload is read, and the buffer grows only as bytes arrive.
	_, err = buf.ReadFrom(rd)
	if err != nil {
		return err
	}
	return wsutil.WriteServerMessage(conn, hdr.OpCode, buf.Bytes())
}

// fail fails the connection as RFC 6455 section 7.1.7 asks when err calls for
// a Close status, and then closes the TCP connection the way section 7.1.1
// describes: shut down the write side, read until the peer closes too.
//
// The read is what makes the close visible to the peer. Closing a socket that
// still holds unread data, such as the rest of a message over the limit, makes
// the kernel send RST, and a browser then reports 1006 instead of the status
// it was sent.
func fail(conn net.Conn, err error) {
	frame := closeFrame(err)
	if frame == nil {
		return
	}
	_, err = conn.Write(frame)
	if err != nil {
		return
	}
	if cw, ok := conn.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	}
	conn.SetReadDeadline(time.Now().Add(lingerTimeout))
	io.Copy(io.Discard, conn)
}

// closeFrame returns the Close frame that answers err, or nil when err leaves
// nobody to answer: the peer went away or the connection broke.
func closeFrame(err error) []byte {
	var pe ws.ProtocolError
	switch {
	case errors.Is(err, wsutil.ErrMessageTooLarge), errors.Is(err, wsutil.ErrFrameTooLarge):
		return ws.CompiledCloseMessageTooBig
	case errors.Is(err, wsutil.ErrInvalidUTF8):
		return ws.CompiledCloseInvalidFramePayloadData
	case errors.As(err, &pe), errors.Is(err, ws.ErrHeaderLengthMSB), errors.Is(err, ws.ErrHeaderLengthUnexpected):
		return ws.CompiledCloseProtocolError
	}
	return nil
}
