package clientip

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"
)

func v2Header(cmd, fam byte, addrs []byte, tlv []byte) []byte {
	b := append([]byte{}, proxyV2Sig...)
	b = append(b, 0x20|cmd, fam)
	b = binary.BigEndian.AppendUint16(b, uint16(len(addrs)+len(tlv)))
	b = append(b, addrs...)
	return append(b, tlv...)
}

func v4Addrs(src, dst string, sp, dp uint16) []byte {
	b := netip.MustParseAddr(src).AsSlice()
	b = append(b, netip.MustParseAddr(dst).AsSlice()...)
	b = binary.BigEndian.AppendUint16(b, sp)
	return binary.BigEndian.AppendUint16(b, dp)
}

var proxyCases = []struct {
	name    string
	in      []byte
	wantSrc string // "" = no address from the header
	wantErr bool
	rest    string // what the reader sees after the header
}{
	{"v1 tcp4", []byte("PROXY TCP4 198.51.100.7 10.0.0.1 51234 8080\r\nGET / HTTP/1.1\r\n"), "198.51.100.7:51234", false, "GET / HTTP/1.1\r\n"},
	{"v1 tcp6", []byte("PROXY TCP6 2001:db8::7 fd00::1 1 80\r\nX"), "[2001:db8::7]:1", false, "X"},
	{"v1 unknown", []byte("PROXY UNKNOWN\r\nX"), "", false, "X"},
	{"v1 unknown with addresses", []byte("PROXY UNKNOWN ffff:f...f ffff:f...f 65535 65535\r\nX"), "", false, "X"},
	{"v1 short, no trailing bytes", []byte("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n"), "1.2.3.4:1", false, ""},
	{"v1 family mismatch", []byte("PROXY TCP4 2001:db8::7 10.0.0.1 1 2\r\n"), "", true, ""},
	{"v1 bad port", []byte("PROXY TCP4 1.2.3.4 5.6.7.8 99999 2\r\n"), "", true, ""},
	{"v1 leading zero port", []byte("PROXY TCP4 1.2.3.4 5.6.7.8 080 2\r\n"), "", true, ""},
	{"v1 no CR", []byte("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n"), "", true, ""},
	{"v1 too long", []byte("PROXY TCP4 " + strings.Repeat("1", 200) + "\r\n"), "", true, ""},
	{"v1 unterminated", []byte("PROXY TCP4 1.2.3.4"), "", true, ""},
	{"v2 tcp4", append(v2Header(1, 0x11, v4Addrs("198.51.100.7", "10.0.0.1", 4000, 80), nil), "GET"...), "198.51.100.7:4000", false, "GET"},
	{"v2 tcp4 with tlv", append(v2Header(1, 0x11, v4Addrs("198.51.100.8", "10.0.0.1", 1, 80), []byte{0x04, 0, 1, 0}), "Z"...), "198.51.100.8:1", false, "Z"},
	{"v2 tcp6", v2Header(1, 0x21, append(append(netip.MustParseAddr("2001:db8::9").AsSlice(), netip.MustParseAddr("fd00::1").AsSlice()...), 0, 7, 0, 80), nil), "[2001:db8::9]:7", false, ""},
	{"v2 local", append(v2Header(0, 0x00, nil, nil), "X"...), "", false, "X"},
	{"v2 unix", v2Header(1, 0x31, make([]byte, 216), nil), "", false, ""},
	{"v2 truncated addresses", v2Header(1, 0x11, []byte{1, 2, 3}, nil), "", true, ""},
	{"v2 bad version", append(append([]byte{}, proxyV2Sig...), 0x11, 0x11, 0, 0), "", true, ""},
	{"v2 body shorter than length", append(append([]byte{}, proxyV2Sig...), 0x21, 0x11, 0, 12, 1), "", true, ""},
	{"plain POST", []byte("POST / HTTP/1.1\r\n"), "", false, "POST / HTTP/1.1\r\n"},
	{"plain with CRLF", []byte("\r\nGET / HTTP/1.1\r\n"), "", false, "\r\nGET / HTTP/1.1\r\n"},
	{"plain PROX", []byte("PROX"), "", false, "PROX"},
	{"empty", nil, "", false, ""},
}

func TestReadProxyHeader(t *testing.T) {
	for _, tc := range proxyCases {
		t.Run(tc.name, func(t *testing.T) {
			br := bufio.NewReaderSize(bytes.NewReader(tc.in), 256)
			src, _, err := readProxyHeader(br)
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v, want error %v", err, tc.wantErr)
			}
			if err != nil {
				return
			}
			got := ""
			if src != nil {
				got = src.String()
			}
			if got != tc.wantSrc {
				t.Fatalf("src %q, want %q", got, tc.wantSrc)
			}
			rest, _ := io.ReadAll(br)
			if string(rest) != tc.rest {
				t.Fatalf("rest %q, want %q", rest, tc.rest)
			}
		})
	}
}

func FuzzProxyHeader(f *testing.F) {
	for _, tc := range proxyCases {
		f.Add(tc.in)
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		br := bufio.NewReaderSize(bytes.NewReader(in), 256)
		src, _, err := readProxyHeader(br)
		if err != nil {
			return
		}
		rest, _ := io.ReadAll(br)
		if len(rest) > len(in) || !bytes.HasSuffix(in, rest) {
			t.Fatalf("rest %q is not a suffix of the input", rest)
		}
		if src == nil && !bytes.Equal(rest, in) && !bytes.HasPrefix(in, proxyV1Prefix) && !bytes.HasPrefix(in, proxyV2Sig) {
			t.Fatal("bytes consumed without a header")
		}
	})
}

// TestProxyListener serves HTTP behind the listener: a trusted peer's
// header sets RemoteAddr; an untrusted peer's header is not honoured.
func TestProxyListener(t *testing.T) {
	tests := []struct {
		name    string
		trusted []string
		send    string
		want    string // RemoteAddr host seen by the handler, "" = request fails
	}{
		{"trusted v1", []string{"127.0.0.1"}, "PROXY TCP4 198.51.100.7 10.0.0.1 5555 80\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n", "198.51.100.7"},
		{"trusted, no header", []string{"127.0.0.1"}, "GET / HTTP/1.1\r\nHost: x\r\n\r\n", "127.0.0.1"},
		{"untrusted header is a bad request", nil, "PROXY TCP4 198.51.100.7 10.0.0.1 5555 80\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n", ""},
		{"untrusted plain", nil, "GET / HTTP/1.1\r\nHost: x\r\n\r\n", "127.0.0.1"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			inner, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			ln := NewProxyListener(inner, mustPrefixes(t, tc.trusted...), time.Second)
			srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				host, _, _ := net.SplitHostPort(r.RemoteAddr)
				io.WriteString(w, host)
			}), ReadHeaderTimeout: 2 * time.Second}
			done := make(chan struct{})
			go func() { defer close(done); srv.Serve(ln) }()
			defer func() { srv.Close(); <-done }()

			c, err := net.Dial("tcp", inner.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			io.WriteString(c, tc.send)
			res, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(res.Body)
			res.Body.Close()
			if tc.want == "" {
				if res.StatusCode != http.StatusBadRequest {
					t.Fatalf("status %d body %q, want 400", res.StatusCode, body)
				}
				return
			}
			if res.StatusCode != 200 || string(body) != tc.want {
				t.Fatalf("status %d, remote %q, want %q", res.StatusCode, body, tc.want)
			}
		})
	}
}

// TestProxyListenerHeaderTimeout: Accept returns at once; a trusted peer
// that never sends its header fails on the first Read after the timeout.
func TestProxyListenerHeaderTimeout(t *testing.T) {
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := NewProxyListener(inner, mustPrefixes(t, "127.0.0.1"), 50*time.Millisecond)
	defer ln.Close()
	c, err := net.Dial("tcp", inner.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "PROXY TCP4 1.2.3.4") // never finished
	sc, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	_, err = sc.Read(make([]byte, 1))
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("read err %v, want a timeout", err)
	}
	if sc.RemoteAddr().String() != c.LocalAddr().String() {
		t.Fatalf("RemoteAddr %s, want the peer %s", sc.RemoteAddr(), c.LocalAddr())
	}
}
