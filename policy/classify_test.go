package policy

import (
	"bytes"
	"encoding/json"
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"
)

func TestSocketIOEvent(t *testing.T) {
	for _, tc := range []struct {
		in   string
		name string
		ok   bool
	}{
		{`42["chat:send","hi"]`, "chat:send", true},
		{`42/chat,["chat:send",{}]`, "chat:send", true},
		{`42/chat,17["chat:send"]`, "chat:send", true},
		{`4217["chat:send"]`, "chat:send", true},
		{`451-["chat:send",{"_placeholder":true,"num":0}]`, "chat:send", true},
		{`451-/admin,["chat:send"]`, "chat:send", true},
		{`452-/admin,9["chat:send"]`, "chat:send", true},
		{`42[ "chat:send"]`, "chat:send", true},
		// socket.io-parser takes white space into the ack id and the
		// attachment count (JavaScript's Number(" ") == " ").
		{`42 ["chat:send","spaced"]`, "chat:send", true},
		{`4201 ["chat:send"]`, "chat:send", true},
		{`42/chat,  ["chat:send"]`, "chat:send", true},
		{"42\t\r\n[\"chat:send\"]", "chat:send", true},
		{"42\u00a0\u2028[\"chat:send\"]", "chat:send", true},
		{`45 1-["chat:send"]`, "chat:send", true},
		{`451e0-["chat:send"]`, "chat:send", true},
		{`450x1-["chat:send"]`, "chat:send", true},
		{`451.0-["chat:send"]`, "chat:send", true},
		{`42 1 2["chat:send"]`, "chat:send", true},
		{"42[\r\n\t \"chat:send\" \n,1]", "chat:send", true},
		{`4512-["chat:send"]`, "chat:send", true},
		{`42/a/b c,0["chat:send"]`, "chat:send", true},
		{`42["a\"b\\",1]`, `a\"b\\`, true},
		{`42["caf\u00e9"]`, `caf\u00e9`, true},
		{`42["",1]`, "", true},
		{`42["chat:send",` + strings.Repeat("{", 100), "chat:send", true},

		{``, "", false},
		{`4`, "", false},
		{`2`, "", false},
		{`3`, "", false},
		{`40`, "", false},
		{`40/chat,{}`, "", false},
		{`41`, "", false},
		{`43["x"]`, "", false},
		{`44{"message":"x"}`, "", false},
		{`46["x"]`, "", false},
		{`52["x"]`, "", false},
		{`4x["a"]`, "", false},
		{`42`, "", false},
		{`42[`, "", false},
		{`42[ `, "", false},
		{`42["`, "", false},
		{`42["chat:se`, "", false},
		{`42["chat:send`, "", false},
		{`42["chat:send\`, "", false},
		{`42["chat:send"`, "", false},
		{`42["chat:send" `, "", false},
		{`42["chat:send"x`, "", false},
		{`42["chat:send"}`, "", false},
		{`42[17]`, "", false},
		{`42[]`, "", false},
		{`42[null]`, "", false},
		{`42{"a":1}`, "", false},
		{`42x["a"]`, "", false},
		{` 42["a"]`, "", false},
		{`42/chat`, "", false},
		{`42/chat["a"]`, "", false},
		{`42/chat,`, "", false},
		{`42/chat,17`, "", false},
		{`42/a,b,["x"]`, "", false},
		{`4217`, "", false},
		{`45-["a"]`, "", false},
		{`451["a"]`, "", false},
		{`451-`, "", false},
		{`45`, "", false},
		{`42["a\q"]`, "", false},
		{`42["\u12"]`, "", false},
		{`42["\u12g4"]`, "", false},
		{"42[\"a\x01\"]", "", false},
		{"42[\"a\nb\"]", "", false},
	} {
		name, ok := SocketIOEvent([]byte(tc.in))
		if ok != tc.ok || string(name) != tc.name {
			t.Errorf("SocketIOEvent(%q) = %q, %v; want %q, %v", tc.in, name, ok, tc.name, tc.ok)
		}
	}
}

func TestEventEquals(t *testing.T) {
	for _, tc := range []struct {
		in, want string
		eq       bool
	}{
		{`42["chat:send",1]`, "chat:send", true},
		{`42["chat:send",1]`, "chat:sen", false},
		{`42["chat:send",1]`, "chat:send!", false},
		{`42["chat:send",1]`, "", false},
		{`42["",1]`, "", true},
		{`42["chat\u003asend"]`, "chat:send", true},
		{`42["\u0063hat:sen\u0064"]`, "chat:send", true},
		{`42["caf\u00e9"]`, "café", true},
		{`42["caf\u00E9"]`, "café", true},
		{`42["caf\u00e9"]`, "cafe", false},
		{`42["café"]`, "café", true},
		{`42["\u00e9x"]`, "éy", false},
		{`42["\ud83d\ude00!"]`, "😀!", true},
		{`42["\uD83D\uDE00"]`, "😀", true},
		{`42["\ud83d"]`, "\uFFFD", true},
		{`42["\ud83d"]`, "\xed\xa0\xbd", false},
		{`42["\ude00\ud83d"]`, "\uFFFD\uFFFD", true},
		{`42["\ud83dx"]`, "\uFFFDx", true},
		{`42["\ud83d\u0041"]`, "\uFFFDA", true},
		{`42["a\"b"]`, `a"b`, true},
		{`42["a\\b"]`, `a\b`, true},
		{`42["a\\"]`, `a\`, true},
		{`42["a\/b"]`, "a/b", true},
		{`42["a\nb\tc\rd\be\ff"]`, "a\nb\tc\rd\be\ff", true},
		{`42["a\"b"]`, `a\"b`, false},
		{`42["chat:send"`, "chat:send", false},
		{`43["chat:send"]`, "chat:send", false},
		{`42/chat,["chat:send"]`, "chat:send", true},
	} {
		if eq := EventEquals([]byte(tc.in), tc.want); eq != tc.eq {
			t.Errorf("EventEquals(%q, %q) = %v, want %v", tc.in, tc.want, eq, tc.eq)
		}
	}
}

func TestJSONField(t *testing.T) {
	deep := func(n int) string { return strings.Repeat("[", n) + strings.Repeat("]", n) }
	for _, tc := range []struct {
		in    string
		path  string // keys joined with '.'
		value string
		str   bool
		ok    bool
	}{
		{`{"method":"subscribe"}`, "method", "subscribe", true, true},
		{" \r\n\t{ \n\"method\"\t:\r \"subscribe\" \n,\"x\":1}", "method", "subscribe", true, true},
		{`{"id":1,"method":"subscribe"}`, "method", "subscribe", true, true},
		{`{"id":1,"method":"subscribe","method":"x"}`, "method", "x", true, true},
		{`{"method":{"a":1},"method":"x"}`, "method", "x", true, true},
		{`{"method":"x","method":{"a":1}}`, "method", "", false, false},
		{`{"a":{"method":"x"},"method":"y"}`, "method", "y", true, true},
		{`{"a":[1,{"method":"x"},"}"],"method":"y"}`, "method", "y", true, true},
		{`{"a":"}\"method\":\"x\"","method":"y"}`, "method", "y", true, true},
		{`{"a":"\\","method":"y"}`, "method", "y", true, true},
		{`{"a":"a\"}b","method":"y"}`, "method", "y", true, true},
		{`{"a":"[{","b":"]}","method":"y"}`, "method", "y", true, true},
		{`{"a" : [ ] , "b" : { } , "c" : [ { } , [ ] ] , "method" : "y" }`, "method", "y", true, true},
		{`{"a":[true,false,null,-0,1.5,2e9,"x"],"method":"y"}`, "method", "y", true, true},
		{`{"method":"a\"b\\c\u00e9"}`, "method", `a\"b\\c\u00e9`, true, true},
		{`{"method":""}`, "method", "", true, true},
		{`{"m\u0065thod":"x"}`, "method", "x", true, true},
		{`{"method\u0000":"x","method":"y"}`, "method", "y", true, true},
		{`{"params":{"channel":"trades"}}`, "params.channel", "trades", true, true},
		{`{"id":7,"params":{"x":[{}],"channel":"trades","y":2},"id2":1}`, "params.channel", "trades", true, true},
		{`{"a":{"b":{"c":"deep"}}}`, "a.b.c", "deep", true, true},
		{`{"params":"x"}`, "params.channel", "", false, false},
		{`{"params":["channel"]}`, "params.channel", "", false, false},
		{`{"params":{"other":1}}`, "params.channel", "", false, false},
		{`{"params":{"other":1},"channel":"x"}`, "params.channel", "", false, false},
		{`{"p":1,"p":{"c":2}}`, "p.c", "2", false, true},
		{`{"n":-1.5e3}`, "n", "-1.5e3", false, true},
		{`{"n":0}`, "n", "0", false, true},
		{`{"n":-0.0e-0 }`, "n", "-0.0e-0", false, true},
		{`{"n":1E+2,"x":1}`, "n", "1E+2", false, true},
		{`{"n":12345678901234567890123}`, "n", "12345678901234567890123", false, true},
		{`{"b":true}`, "b", "true", false, true},
		{`{"b":false}`, "b", "false", false, true},
		{`{"b":null}`, "b", "null", false, true},
		{`{"o":{}}`, "o", "", false, false},
		{`{"o":{"a":1}}`, "o", "", false, false},
		{`{"o":[]}`, "o", "", false, false},
		{`{"a":` + deep(maxSkipDepth) + `,"m":1}`, "m", "1", false, true},
		{`{"a":` + deep(maxSkipDepth+1) + `,"m":1}`, "m", "", false, false},
		{`{"a":` + strings.Repeat(`{"a":`, maxSkipDepth) + `1` + strings.Repeat("}", maxSkipDepth) + `,"m":1}`, "m", "1", false, true},

		// Not found.
		{`{}`, "m", "", false, false},
		{`{ }`, "m", "", false, false},
		{`{"a":1}`, "m", "", false, false},
		{`{"a":1}{"m":1}`, "m", "", false, false},
		{`{"a":1}`, "", "", false, false},

		// Truncated.
		{``, "m", "", false, false},
		{` `, "m", "", false, false},
		{`{`, "m", "", false, false},
		{`{"`, "m", "", false, false},
		{`{"m`, "m", "", false, false},
		{`{"m"`, "m", "", false, false},
		{`{"m" `, "m", "", false, false},
		{`{"m":`, "m", "", false, false},
		{`{"m": `, "m", "", false, false},
		{`{"m":"`, "m", "", false, false},
		{`{"m":"sub`, "m", "", false, false},
		{`{"m":"sub\`, "m", "", false, false},
		{`{"m":"sub\u00`, "m", "", false, false},
		{`{"m":"sub"`, "m", "", false, false},
		{`{"m":"sub" `, "m", "", false, false},
		{`{"m":12`, "m", "", false, false},
		{`{"m":12 `, "m", "", false, false},
		{`{"m":-`, "m", "", false, false},
		{`{"m":1.`, "m", "", false, false},
		{`{"m":1e`, "m", "", false, false},
		{`{"m":1e+`, "m", "", false, false},
		{`{"m":tru`, "m", "", false, false},
		{`{"m":true`, "m", "", false, false},
		{`{"m":null`, "m", "", false, false},
		{`{"a":1`, "m", "", false, false},
		{`{"a":1,`, "m", "", false, false},
		{`{"a":1, `, "m", "", false, false},
		{`{"a":[1,2`, "m", "", false, false},
		{`{"a":[1,2]`, "m", "", false, false},
		{`{"a":{"b":"}`, "m", "", false, false},
		{`{"a":{"b"`, "m", "", false, false},
		{`{"a":"x\"`, "m", "", false, false},
		{`{"p":{"c"`, "p.c", "", false, false},

		// Malformed.
		{`["m",1]`, "m", "", false, false},
		{`"m"`, "m", "", false, false},
		{`{m:1}`, "m", "", false, false},
		{`{'m':1}`, "m", "", false, false},
		{`{"m" 1}`, "m", "", false, false},
		{`{"m"::1}`, "m", "", false, false},
		{`{,"m":1}`, "m", "", false, false},
		{`{"a":1,,"m":1}`, "m", "", false, false},
		{`{"a":1 "m":2}`, "m", "", false, false},
		{`{"a":1,}`, "m", "", false, false},
		{`{"m":01}`, "m", "", false, false},
		{`{"m":1.}`, "m", "", false, false},
		{`{"m":.5}`, "m", "", false, false},
		{`{"m":+1}`, "m", "", false, false},
		{`{"m":1e}`, "m", "", false, false},
		{`{"m":0x1}`, "m", "", false, false},
		{`{"m":--1}`, "m", "", false, false},
		{`{"m":True}`, "m", "", false, false},
		{`{"m":nul}`, "m", "", false, false},
		{`{"m":truex}`, "m", "", false, false},
		{`{"m":"x"]`, "m", "", false, false},
		{`{"m":"x"x`, "m", "", false, false},
		{`{"m":"x":1}`, "m", "", false, false},
		{`{"m":'x'}`, "m", "", false, false},
		{`{"m":"a\qb"}`, "m", "", false, false},
		{`{"m":"\u00zz"}`, "m", "", false, false},
		{"{\"m\":\"a\tb\"}", "m", "", false, false},
		{"{\"m\":\"a\x00b\"}", "m", "", false, false},
		{`{"a":[1,],"m":1}`, "m", "", false, false},
		{`{"a":[,1],"m":1}`, "m", "", false, false},
		{`{"a":[1 2],"m":1}`, "m", "", false, false},
		{`{"a":{"b"},"m":1}`, "m", "", false, false},
		{`{"a":{"b":1,},"m":1}`, "m", "", false, false},
		{`{"a":{1:2},"m":1}`, "m", "", false, false},
		{`{"a":[}],"m":1}`, "m", "", false, false},
		{`{"a":[1},"m":1}`, "m", "", false, false},
		{`{"a":{"b":1]},"m":1}`, "m", "", false, false},
		{`{"a":x,"m":1}`, "m", "", false, false},
		{`{"a":"b\x","m":1}`, "m", "", false, false},
		{"{\"a\":\"\x1f\",\"m\":1}", "m", "", false, false},
	} {
		var path []string
		if tc.path != "" {
			path = strings.Split(tc.path, ".")
		}
		value, str, ok := JSONField([]byte(tc.in), path)
		if string(value) != tc.value || str != tc.str || ok != tc.ok {
			t.Errorf("JSONField(%q, %q) = %q, %v, %v; want %q, %v, %v", tc.in, path, value, str, ok, tc.value, tc.str, tc.ok)
		}
		if len(path) > 0 {
			checkReference(t, []byte(tc.in), path, value, str, ok)
		}
	}
}

func TestFieldEquals(t *testing.T) {
	for _, tc := range []struct {
		in, path, want string
		eq             bool
	}{
		{`{"method":"subscribe"}`, "method", "subscribe", true},
		{`{"method":"subscribe"}`, "method", "subscrib", false},
		{`{"method":"subscribe"}`, "method", "subscribex", false},
		{`{"method":"subscribe"}`, "Method", "subscribe", false},
		{`{"method":"sub\u0073cribe"}`, "method", "subscribe", true},
		{`{"m\u0065thod":"subscribe"}`, "method", "subscribe", true},
		{`{"m":"caf\u00e9"}`, "m", "café", true},
		{`{"m":"\ud83d\ude00"}`, "m", "😀", true},
		{`{"m":"a\"b"}`, "m", `a"b`, true},
		{`{"m":"a\\b"}`, "m", `a\b`, true},
		{`{"m":"a\/b"}`, "m", `a/b`, true},
		{`{"m":"a\nb"}`, "m", "a\nb", true},
		{`{"m":"a\nb"}`, "m", `a\nb`, false},
		{`{"params":{"channel":"tr\/ades"}}`, "params.channel", "tr/ades", true},
		{`{"id":17}`, "id", "17", true},
		{`{"id":"17"}`, "id", "17", true},
		{`{"id":17.0}`, "id", "17", false},
		{`{"n":-1.5e3}`, "n", "-1.5e3", true},
		{`{"n":-1.5e3}`, "n", "-1500", false},
		{`{"ok":true}`, "ok", "true", true},
		{`{"ok":false}`, "ok", "true", false},
		{`{"x":null}`, "x", "null", true},
		{`{"x":null}`, "x", "", false},
		{`{"x":""}`, "x", "", true},
		{`{"x":{}}`, "x", "{}", false},
		{`{"m":"subscribe"`, "m", "subscribe", false},
		{`{"m":"subscribe"}`, "", "subscribe", false},
	} {
		var path []string
		if tc.path != "" {
			path = strings.Split(tc.path, ".")
		}
		if eq := FieldEquals([]byte(tc.in), path, tc.want); eq != tc.eq {
			t.Errorf("FieldEquals(%q, %q, %q) = %v, want %v", tc.in, path, tc.want, eq, tc.eq)
		}
	}
}

// socketIO512 is a 512-byte socket.io chat message.
func socketIO512() []byte {
	head := `451-/chat,17["chat:send",{"room":"lobby","text":"`
	tail := `"}]`
	return []byte(head + strings.Repeat("x", 512-len(head)-len(tail)) + tail)
}

// json512 is a 512-byte JSON-RPC message whose method comes last, after
// members that nest, hold escapes and hold the bytes that delimit JSON.
func json512() []byte {
	head := `{"jsonrpc":"2.0","id":4711,"meta":{"trace":[1,-2.5e3,true,null,{"k":"v"},[]],` +
		`"note":"a \"quoted\" } ] , brace \\"},"tags":["a","b\\","\u00e9"],"pad":"`
	tail := `","params":{"depth":10,"channel":"tr\u0061des"},"method":"subscribe"}`
	return []byte(head + strings.Repeat("lorem ipsum ", 40)[:512-len(head)-len(tail)] + tail)
}

func TestClassifyAllocs(t *testing.T) {
	sio, obj := socketIO512(), json512()
	if len(sio) != 512 || len(obj) != 512 || !json.Valid(obj) {
		t.Fatalf("test messages: %d and %d bytes", len(sio), len(obj))
	}
	method, channel := []string{"method"}, []string{"params", "channel"}
	for name, f := range map[string]func() bool{
		"SocketIOEvent": func() bool { _, ok := SocketIOEvent(sio); return ok },
		"EventEquals":   func() bool { return EventEquals(sio, "chat:send") },
		"JSONField":     func() bool { _, _, ok := JSONField(obj, method); return ok },
		"FieldEquals":   func() bool { return FieldEquals(obj, method, "subscribe") },
		"FieldEquals escaped": func() bool {
			return FieldEquals(obj, channel, "trades")
		},
	} {
		if !f() {
			t.Errorf("%s: no match", name)
		}
		if n := testing.AllocsPerRun(100, func() { f() }); n != 0 {
			t.Errorf("%s: %v allocations per call", name, n)
		}
	}
}

func BenchmarkClassifySocketIO512(b *testing.B) {
	msg := socketIO512()
	b.ReportAllocs()
	b.SetBytes(int64(len(msg)))
	for b.Loop() {
		if !EventEquals(msg, "chat:send") {
			b.Fatal("no match")
		}
	}
}

func BenchmarkClassifyJSON512(b *testing.B) {
	msg, path := json512(), []string{"method"}
	b.ReportAllocs()
	b.SetBytes(int64(len(msg)))
	for b.Loop() {
		if !FieldEquals(msg, path, "subscribe") {
			b.Fatal("no match")
		}
	}
}

// offsetIn returns where the non-empty sub starts within b, or -1 when it
// does not alias b.
func offsetIn(b, sub []byte) int {
	for i := range len(b) - len(sub) + 1 {
		if &b[i] == &sub[0] {
			return i
		}
	}
	return -1
}

// checkStable fails unless got (found in whole, a longer message that starts
// with prefix) is the same bytes of the same place as want (found in prefix).
func checkStable(t *testing.T, prefix, want, whole, got []byte) {
	t.Helper()
	if len(want) == 0 {
		if len(got) != 0 {
			t.Fatalf("%q gives %q, but %q gives %q", prefix, want, whole, got)
		}
		return
	}
	at := offsetIn(prefix, want)
	if at < 0 || at+len(want) > len(prefix) {
		t.Fatalf("%q: the answer %q is not within the prefix", prefix, want)
	}
	if len(got) != len(want) || offsetIn(whole, got) != at {
		t.Fatalf("%q gives %q at %d, but %q gives %q", prefix, want, at, whole, got)
	}
}

// decodeJSONString decodes a JSON string body with encoding/json.
func decodeJSONString(t *testing.T, raw []byte) string {
	t.Helper()
	var s string
	if err := json.Unmarshal([]byte(`"`+string(raw)+`"`), &s); err != nil {
		t.Fatalf("%q is not a JSON string body: %v", raw, err)
	}
	return s
}

func FuzzSocketIOEvent(f *testing.F) {
	for _, s := range []string{
		`42["chat:send","hi"]`, `42/chat,17["chat:send"]`, `452-/admin,9["chat:send"]`,
		`42[ "caf\u00e9\ud83d\ude00"]`, `42["a\"b\\c",1]`, `43["x"]`, `42["chat:se`, "",
	} {
		f.Add([]byte(s), []byte(`,{"x":1}]`))
	}
	f.Fuzz(func(t *testing.T, prefix, more []byte) {
		name, ok := SocketIOEvent(prefix)
		if !ok {
			if name != nil || EventEquals(prefix, "") {
				t.Fatalf("%q: not an event, but the name %q", prefix, name)
			}
			return
		}
		whole := append(bytes.Clone(prefix), more...)
		got, ok := SocketIOEvent(whole)
		if !ok {
			t.Fatalf("%q gives %q, but %q gives none", prefix, name, whole)
		}
		checkStable(t, prefix, name, whole, got)
		if utf8.Valid(name) {
			if want := decodeJSONString(t, name); !EventEquals(prefix, want) {
				t.Fatalf("EventEquals(%q, %q) is false", prefix, want)
			}
		}
	})
}

func FuzzJSONField(f *testing.F) {
	for _, s := range []string{
		`{"method":"subscribe"}`, `{"id":1,"params":{"channel":"trades"},"method":"x"}`,
		`{"a":[1,{"b":"}"}],"m\u0065thod":-1.5e3}`, `{"a":"\\\"","method":true}`,
		`{"method":"\ud83d\ude00"}`, `{"a":[[[[[]]]]],"method":null}`, `{"method":1`, "",
	} {
		f.Add([]byte(s), []byte(`,"z":[]}`), "method", "channel", false)
		f.Add([]byte(s), []byte(`}`), "params", "channel", true)
	}
	f.Fuzz(func(t *testing.T, prefix, more []byte, key1, key2 string, two bool) {
		path := []string{key1}
		if two {
			path = append(path, key2)
		}
		value, str, ok, decided := jsonField(prefix, path)
		checkReference(t, prefix, path, value, str, ok)
		if !ok {
			if value != nil || str || FieldEquals(prefix, path, "") {
				t.Fatalf("%q %q: not found, but the value %q", prefix, path, value)
			}
			return
		}
		if !decided {
			// An object on the path goes on past prefix: a later member
			// of the same name may still replace the value.
			return
		}
		whole := append(bytes.Clone(prefix), more...)
		got, gotStr, ok := JSONField(whole, path)
		if !ok || gotStr != str {
			t.Fatalf("%q %q gives %q, but %q gives %q, %v", prefix, path, value, whole, got, ok)
		}
		checkStable(t, prefix, value, whole, got)
		want := string(value)
		if str && utf8.Valid(value) {
			want = decodeJSONString(t, value)
		}
		if (!str || utf8.Valid(value)) && !FieldEquals(prefix, path, want) {
			t.Fatalf("FieldEquals(%q, %q, %q) is false", prefix, path, want)
		}
	})
}

// checkReference fails unless JSONField's answer for a complete JSON
// document agrees with encoding/json's, when the two can agree: the
// document is valid UTF-8 and nests no deeper than JSONField skips.
func checkReference(t *testing.T, doc []byte, path []string, value []byte, str, ok bool) {
	t.Helper()
	if !json.Valid(doc) || !utf8.Valid(doc) || bytes.Count(doc, []byte("["))+bytes.Count(doc, []byte("{")) > maxSkipDepth {
		return
	}
	for _, k := range path {
		if !utf8.ValidString(k) {
			return
		}
	}
	want, wantStr, wantOK := refJSONField(doc, path)
	got := string(value)
	if str {
		got = decodeJSONString(t, value)
	}
	if ok != wantOK || str != wantStr || got != want {
		t.Fatalf("JSONField(%q, %q) = %q, %v, %v; encoding/json finds %q, %v, %v", doc, path, got, str, ok, want, wantStr, wantOK)
	}
}

// refJSONField is JSONField by encoding/json, for a valid document: a
// string's decoded value, or a literal's text. Decoding into maps, it
// keeps the last of duplicate keys, as the apps' parsers do.
func refJSONField(doc []byte, path []string) (value string, str, ok bool) {
	d := json.NewDecoder(bytes.NewReader(doc))
	d.UseNumber()
	var v any
	if d.Decode(&v) != nil {
		return "", false, false
	}
	for _, key := range path {
		m, isObject := v.(map[string]any)
		if !isObject {
			return "", false, false
		}
		var found bool
		if v, found = m[key]; !found {
			return "", false, false
		}
	}
	switch v := v.(type) {
	case string:
		return v, true, true
	case json.Number:
		return string(v), false, true
	case bool:
		return strconv.FormatBool(v), false, true
	case nil:
		return "null", false, true
	}
	return "", false, false // an object or array
}

// TestUnlimitedClassNeedsWholeObject: a message passes uncounted (an
// unlimited class) only when the object that names it ends within the
// bytes the gate saw: a duplicate key further on would name it otherwise
// for the app, whose parser keeps the last.
func TestUnlimitedClassNeedsWholeObject(t *testing.T) {
	heartbeat := &Class{Name: "heartbeat", FieldPath: []string{"type"}, FieldEquals: "ping", Unlimited: true}
	chat := &Class{Name: "chat", FieldPath: []string{"type"}, FieldEquals: "chat"}
	for _, tc := range []struct {
		head            string
		heartbeat, chat bool
	}{
		{`{"type":"ping"}`, true, false},
		{`{"type":"ping","type":"chat"}`, false, true},
		{`{"type":"chat","type":"ping"}`, true, false},
		{`{"type":"ping","text":"and the rest not seen yet`, false, false},
		{`{"type":"chat","text":"and the rest not seen yet`, false, true},
	} {
		if got := heartbeat.Matches([]byte(tc.head)); got != tc.heartbeat {
			t.Errorf("%s: heartbeat %v, want %v", tc.head, got, tc.heartbeat)
		}
		if got := chat.Matches([]byte(tc.head)); got != tc.chat {
			t.Errorf("%s: chat %v, want %v", tc.head, got, tc.chat)
		}
	}
}
