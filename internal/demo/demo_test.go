package demo

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// testTimeout guards every test connection against a server that never
// answers; passing tests finish long before it.
const testTimeout = 10 * time.Second

func newServer(t *testing.T) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(Handler(slog.New(slog.DiscardHandler)))
	t.Cleanup(srv.Close)
	return srv
}

// client is the client end of a WebSocket connection.
type client struct {
	net.Conn
	r io.Reader
}

func (c *client) Read(p []byte) (int, error) {
	return c.r.Read(p)
}

func dial(t *testing.T, srv *httptest.Server, path string) *client {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), testTimeout)
	defer cancel()
	conn, br, _, err := ws.Dial(ctx, "ws"+strings.TrimPrefix(srv.URL, "http")+path)
	if err != nil {
		t.Fatalf(
			"dial: %v",
			err)
	}
	t.Cleanup(func() { conn.Close() })
	conn.SetDeadline(time.Now().Add(testTimeout))
	c := &client{
		Conn: conn,
		r:    conn,
	}
	if br != nil {
		// The server sent frames along with its handshake answer.
		c.r = io.MultiReader(br, conn)
	}
	return c
}

// closeNormally runs the client side of the closing handshake and checks
// that the server echoes the status.
func closeNormally(t *testing.T, c *client) {
	t.Helper()
	body := ws.NewCloseFrameBody(ws.StatusNormalClosure, "bye")
	err := wsutil.WriteClientMessage(c, ws.OpClose, body)
	if err != nil {
		t.Fatalf(
			"write close: %v",
			err)
	}
	_, _, err = wsutil.ReadServerData(c)
	var closed wsutil.ClosedError
	if !errors.As(err, &closed) || closed.Code != ws.StatusNormalClosure {
		t.Fatalf(
			"after close got %v, want the server's close with %d",
			err, ws.StatusNormalClosure)
	}
}

func TestPage(t *testing.T) {
	srv := newServer(t)
	resp, err := srv.Client().Get(srv.URL + "/")
	if err != nil {
		t.Fatalf(
			"get page: %v",
			err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf(
			"read page: %v",
			err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Errorf(
			"status %d, want %d",
			resp.StatusCode, http.StatusOK)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/html") {
		t.Errorf(
			"content type %q, want text/html",
			ct)
	}
	for _, want := range []string{"wsgate", "/ws", "4008"} {
		if !bytes.Contains(body, []byte(want)) {
			t.Errorf(
				"page does not contain %q",
				want)
		}
	}
}

func TestEcho(t *testing.T) {
	tests := []struct {
		name    string
		op      ws.OpCode
		payload []byte
	}{
		{
			name:    "text",
			op:      ws.OpText,
			payload: []byte("hello, wsgate"),
		},
		{
			name:    "binary",
			op:      ws.OpBinary,
			payload: []byte{0, 1, 2, 0xfe, 0xff},
		},
		{
			name:    "empty text",
			op:      ws.OpText,
			payload: []byte{},
		},
		{
			name:    "binary at the limit",
			op:      ws.OpBinary,
			payload: bytes.Repeat([]byte{'x'}, maxMessageSize),
		},
	}
	srv := newServer(t)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c := dial(t, srv, "/ws")
			for range 3 {
				err := wsutil.WriteClientMessage(c, tt.op, tt.payload)
				if err != nil {
					t.Fatalf(
						"write: %v",
						err)
				}
				got, op, err := wsutil.ReadServerData(c)
				if err != nil {
					t.Fatalf(
						"read: %v",
						err)
				}
				if op != tt.op || !bytes.Equal(got, tt.payload) {
					t.Fatalf(
						"echo is op %v with %d bytes, want op %v with %d bytes",
						op, len(got), tt.op, len(tt.payload))
				}
			}
			closeNormally(t, c)
		})
	}
}

func TestEchoPing(t *testing.T) {
	srv := newServer(t)
	c := dial(t, srv, "/ws")
	err := wsutil.WriteClientMessage(c, ws.OpPing, []byte("are you there"))
	if err != nil {
		t.Fatalf(
			"write ping: %v",
			err)
	}
	msgs, err := wsutil.ReadServerMessage(c, nil)
	if err != nil {
		t.Fatalf(
			"read pong: %v",
			err)
	}
	if len(msgs) != 1 || msgs[0].OpCode != ws.OpPong || string(msgs[0].Payload) != "are you there" {
		t.Fatalf(
			"got %+v, want one pong with the ping's payload",
			msgs)
	}
	closeNormally(t, c)
}

func TestEchoFailure(t *testing.T) {
	tests := []struct {
		name  string
		frame ws.Frame
		want  ws.StatusCode
	}{
		{
			name:  "message over the limit",
			frame: ws.NewBinaryFrame(make([]byte, maxMessageSize+1)),
			want:  ws.StatusMessageTooBig,
		},
		{
			name:  "invalid UTF-8 in text",
			frame: ws.NewTextFrame([]byte{0xff, 0xfe}),
			want:  ws.StatusInvalidFramePayloadData,
		},
		{
			name:  "continuation without a start",
			frame: ws.NewFrame(ws.OpContinuation, true, []byte("x")),
			want:  ws.StatusProtocolError,
		},
	}
	srv := newServer(t)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c := dial(t, srv, "/ws")
			err := ws.WriteFrame(c, ws.MaskFrame(tt.frame))
			if err != nil {
				t.Fatalf(
					"write: %v",
					err)
			}
			_, _, err = wsutil.ReadServerData(c)
			var closed wsutil.ClosedError
			if !errors.As(err, &closed) || closed.Code != tt.want {
				t.Fatalf(
					"got %v, want close with %d",
					err, tt.want)
			}
			// ReadServerData has answered the Close; the server ends the
			// connection after it.
			_, err = io.Copy(io.Discard, c)
			if err != nil {
				t.Fatalf(
					"waiting for the server to close: %v",
					err)
			}
		})
	}
}

func TestEchoRejectsPlainRequest(t *testing.T) {
	srv := newServer(t)
	resp, err := srv.Client().Get(srv.URL + "/ws")
	if err != nil {
		t.Fatalf(
			"get: %v",
			err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Fatalf(
			"status %d, want %d",
			resp.StatusCode, http.StatusBadRequest)
	}
}

func TestEchoEndsWithServerContext(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	srv := httptest.NewUnstartedServer(Handler(nil))
	srv.Config.BaseContext = func(net.Listener) context.Context { return ctx }
	srv.Start()
	t.Cleanup(srv.Close)
	c := dial(t, srv, "/ws")
	err := wsutil.WriteClientText(c, []byte("before"))
	if err != nil {
		t.Fatalf(
			"write: %v",
			err)
	}
	_, _, err = wsutil.ReadServerData(c)
	if err != nil {
		t.Fatalf(
			"read: %v",
			err)
	}
	cancel()
	_, err = io.Copy(io.Discard, c)
	if err != nil {
		t.Fatalf(
			"got %v, want the server to close the connection",
			err)
	}
}

// TestFavicon: the icon every browser asks for is served, not answered as a
// failed upgrade.
func TestFavicon(t *testing.T) {
	srv := newServer(t)
	resp, err := srv.Client().Get(srv.URL + "/favicon.ico")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "image/svg+xml" || !bytes.HasPrefix(body, []byte("<svg")) {
		t.Errorf("favicon: %d %q %.40q", resp.StatusCode, resp.Header.Get("Content-Type"), body)
	}
}
