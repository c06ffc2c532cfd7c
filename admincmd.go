package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"

	"github.com/urfave/cli/v2"

	"github.com/holo/wsgate/admin"
	"github.com/holo/wsgate/limit"
)

// adminCommand is `wsgate admin ...`: the admin API's calls from a shell,
// e.g. `kubectl exec` into the pod, where the gate's own WSGATE_ADMIN_LISTEN
// and WSGATE_ADMIN_TOKEN_FILE point it at the gate.
func adminCommand() *cli.Command {
	common := []cli.Flag{
		&cli.StringFlag{Name: "admin-url", EnvVars: env("admin-url"), Value: defaultAdminURL(),
			Usage: "the gate's admin port (in the gate's pod: 127.0.0.1 and the port of its WSGATE_ADMIN_LISTEN)"},
		&cli.StringFlag{Name: "admin-token-file", EnvVars: env("admin-token-file"), Required: true,
			Usage: "file holding the admin bearer token (the gate's --admin-token-file)"},
		&cli.BoolFlag{Name: "json", Usage: "print the API's JSON answer as it is"},
	}
	with := func(extra ...cli.Flag) []cli.Flag { return append(append([]cli.Flag{}, common...), extra...) }
	issuer := &cli.StringFlag{Name: "issuer", Usage: "the issuer of the tokens of a user:<subject> key, needed when the gate has no --jwt-issuer (\"\" for tokens without iss)"}
	reason := &cli.StringFlag{Name: "reason", Usage: "why, for the log and the client's close frame"}
	selector := []cli.Flag{
		&cli.StringFlag{Name: "user", Usage: "the token subject"},
		&cli.StringFlag{Name: "ip", Usage: "the client address"},
		&cli.StringFlag{Name: "jti", Usage: "the token id"},
	}
	keyArg := func(c *cli.Context) (string, error) {
		if c.NArg() != 1 {
			return "", cli.Exit("wsgate admin "+c.Command.Name+": name one key: user:<subject>, ip:<address> or a rules file's <key>:<value>", exitBadConfig)
		}
		return c.Args().First(), nil
	}
	return &cli.Command{
		Name:  "admin",
		Usage: "call the admin API of a running gate (its --admin-token-file must be set)",
		Subcommands: []*cli.Command{
			{
				Name: "inspect", Usage: "show a key's counters, blocks, strikes and hold on the store", ArgsUsage: "KEY",
				Flags: with(issuer),
				Action: func(c *cli.Context) error {
					k, err := keyArg(c)
					if err != nil {
						return err
					}
					q := url.Values{"key": {k}}
					if c.IsSet("issuer") {
						q.Set("issuer", c.String("issuer"))
					}
					return adminCall(c, http.MethodGet, "/v1/keys", q, nil, printKey)
				},
			},
			{
				Name: "reset", Usage: "clear a key's counters, blocks, strikes and hold on every replica", ArgsUsage: "KEY",
				Flags: with(issuer),
				Action: func(c *cli.Context) error {
					k, err := keyArg(c)
					if err != nil {
						return err
					}
					return adminCall(c, http.MethodPost, "/v1/keys/reset", nil, admin.KeyCall{Key: k, Issuer: issuerOf(c)}, printDone)
				},
			},
			{
				Name: "block", Usage: "refuse a key's handshakes and messages on every replica for a while", ArgsUsage: "KEY",
				Flags: with(issuer, reason, &cli.DurationFlag{Name: "for", Required: true, Usage: "how long, e.g. 10m"}),
				Action: func(c *cli.Context) error {
					k, err := keyArg(c)
					if err != nil {
						return err
					}
					body := map[string]any{"key": k, "for": c.Duration("for").String(), "reason": c.String("reason")}
					if iss := issuerOf(c); iss != nil {
						body["issuer"] = *iss
					}
					return adminCall(c, http.MethodPost, "/v1/keys/block", nil, body, printDone)
				},
			},
			{
				Name: "connections", Usage: "list this replica's connections of a user, an IP or a token",
				Flags: with(selector...),
				Action: func(c *cli.Context) error {
					q := url.Values{}
					for _, f := range []string{"user", "ip", "jti"} {
						if v := c.String(f); v != "" {
							q.Set(f, v)
						}
					}
					return adminCall(c, http.MethodGet, "/v1/connections", q, nil, printConnections)
				},
			},
			{
				Name: "disconnect", Usage: "close a user's, an IP's or a token's connections on every replica (1008)",
				Flags: with(append(selector, reason)...),
				Action: func(c *cli.Context) error {
					body := admin.DisconnectCall{User: c.String("user"), IP: c.String("ip"), JTI: c.String("jti"), Reason: c.String("reason")}
					return adminCall(c, http.MethodPost, "/v1/disconnect", nil, body, printDone)
				},
			},
			{
				Name: "drain", Usage: "close a share of this replica's connections gently (1012 and a retry hint), spread over a window",
				Flags: with(
					&cli.Float64Flag{Name: "share", Required: true, Usage: "share of the connections, above 0 and at most 1"},
					&cli.DurationFlag{Name: "spread", Usage: "spread the closes over this window"}),
				Action: func(c *cli.Context) error {
					body := map[string]any{"share": c.Float64("share"), "spread": c.Duration("spread").String()}
					return adminCall(c, http.MethodPost, "/v1/drain", nil, body, printDone)
				},
			},
			{
				Name: "revoke", Usage: "refuse a subject's or a token's handshakes and close its connections on every replica",
				Flags: with(reason,
					&cli.StringFlag{Name: "subject", Usage: "the token subject"},
					&cli.StringFlag{Name: "jti", Usage: "the token id"},
					&cli.DurationFlag{Name: "for", Required: true, Usage: "how long: the longest remaining life of a token it names, e.g. 24h"}),
				Action: func(c *cli.Context) error {
					body := map[string]string{"subject": c.String("subject"), "jti": c.String("jti"),
						"for": c.Duration("for").String(), "reason": c.String("reason")}
					return adminCall(c, http.MethodPost, "/v1/revocations", nil, body, printDone)
				},
			},
			{
				Name: "unrevoke", Usage: "lift a revocation",
				Flags: with(&cli.StringFlag{Name: "subject"}, &cli.StringFlag{Name: "jti"}),
				Action: func(c *cli.Context) error {
					q := url.Values{}
					for _, f := range []string{"subject", "jti"} {
						if v := c.String(f); v != "" {
							q.Set(f, v)
						}
					}
					return adminCall(c, http.MethodDelete, "/v1/revocations", q, nil, printDone)
				},
			},
			{
				Name: "revocations", Usage: "list the revocations in force",
				Flags: with(),
				Action: func(c *cli.Context) error {
					return adminCall(c, http.MethodGet, "/v1/revocations", nil, nil, printRevocations)
				},
			},
		},
	}
}

// adminArgsLast moves the arguments of `wsgate admin <call>` that are not
// flags behind its flags, so that `admin block user:alice --for 10m` reads
// as `admin block --for 10m user:alice` does (the flag parser stops at the
// first argument that is not a flag). Every flag of the admin calls takes a
// value except the booleans here.
func adminArgsLast(args []string) []string {
	if len(args) < 4 || args[1] != "admin" {
		return args
	}
	bools := map[string]bool{"json": true, "help": true, "h": true}
	out := append([]string{}, args[:3]...)
	var rest []string
	for i := 3; i < len(args); i++ {
		a := args[i]
		switch {
		case a == "--":
			rest = append(rest, args[i+1:]...)
			i = len(args)
		case strings.HasPrefix(a, "-") && len(a) > 1:
			out = append(out, a)
			name := strings.TrimLeft(a, "-")
			if !strings.Contains(name, "=") && !bools[name] && i+1 < len(args) {
				i++
				out = append(out, args[i])
			}
		default:
			rest = append(rest, a)
		}
	}
	if len(rest) == 0 {
		return out
	}
	return append(append(out, "--"), rest...)
}

// issuerOf is the --issuer of a call, nil when not given.
func issuerOf(c *cli.Context) *string {
	if !c.IsSet("issuer") {
		return nil
	}
	v := c.String("issuer")
	return &v
}

// defaultAdminURL is the admin port of a gate in the same pod: its
// WSGATE_ADMIN_LISTEN on loopback, or the default port.
func defaultAdminURL() string {
	port := "9090"
	if l := os.Getenv("WSGATE_ADMIN_LISTEN"); l != "" {
		if _, p, err := net.SplitHostPort(l); err == nil && p != "" {
			port = p
		}
	}
	return "http://127.0.0.1:" + port
}

// adminCall makes one call and prints its answer: as JSON under --json,
// else through print.
func adminCall(c *cli.Context, method, path string, q url.Values, body any, print func(io.Writer, []byte) error) error {
	cl, err := admin.NewClient(c.String("admin-url"), c.String("admin-token-file"))
	if err != nil {
		return cli.Exit("wsgate admin: "+err.Error(), exitBadConfig)
	}
	out, err := cl.Call(c.Context, method, path, q, body)
	if err != nil {
		return cli.Exit("wsgate admin "+c.Command.Name+": "+err.Error(), 1)
	}
	w := c.App.Writer
	if c.Bool("json") {
		var b bytes.Buffer
		if json.Indent(&b, out, "", "  ") != nil {
			b.Reset()
			b.Write(out)
		}
		_, err = fmt.Fprintln(w, strings.TrimSpace(b.String()))
		return err
	}
	return print(w, out)
}

// ms prints milliseconds as a duration.
func ms(n int64) string {
	return (time.Duration(n) * time.Millisecond).String()
}

func printDone(w io.Writer, b []byte) error {
	var d admin.Done
	if err := json.Unmarshal(b, &d); err != nil {
		return err
	}
	var s strings.Builder
	switch d.Action {
	case "reset":
		fmt.Fprintf(&s, "%s: counters, blocks, strikes and hold cleared on every replica", d.Key)
	case "block":
		fmt.Fprintf(&s, "%s: blocked on every replica for %s", d.Key, ms(d.ForMs))
	case "disconnect":
		fmt.Fprintf(&s, "disconnect sent to every replica; %s closed %d connection(s)", d.Replica, deref(d.Closed))
	case "drain":
		fmt.Fprintf(&s, "%s: draining %d connection(s)", d.Replica, deref(d.Closed))
	case "revoke":
		fmt.Fprintf(&s, "revoked on every replica for %s; its connections are being closed", ms(d.ForMs))
	case "unrevoke":
		s.WriteString("revocation lifted")
	default:
		fmt.Fprintf(&s, "%s done", d.Action)
	}
	if d.Reason != "" {
		fmt.Fprintf(&s, " (reason: %s)", clean(d.Reason))
	}
	_, err := fmt.Fprintln(w, s.String())
	return err
}

// clean prints s as it is when it is plain text, quoted otherwise: a path,
// a subject or a reason comes from clients and operators and must not
// drive the terminal (escape sequences) or forge a table row (tabs,
// newlines).
func clean(s string) string {
	for _, r := range s {
		if !unicode.IsPrint(r) {
			return strconv.Quote(s)
		}
	}
	return s
}

func deref(n *int) int {
	if n == nil {
		return 0
	}
	return *n
}

func printKey(w io.Writer, b []byte) error {
	var k admin.KeyAnswer
	if err := json.Unmarshal(b, &k); err != nil {
		return err
	}
	fmt.Fprintf(w, "%s (store %s, asked %s)\n", clean(k.Key), k.Store, clean(k.Replica))
	if h := k.Hold; h != nil {
		fmt.Fprintf(w, "  blocked by an operator: %s left (%s)\n", ms(h.LeftMs), clean(h.Reason))
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  RULE\tWINDOW\tCOUNT\tLEFT\tBLOCKED\tSTRIKES")
	for _, r := range k.Rules {
		blocked := "-"
		if r.BlockLeftMs > 0 {
			blocked = ms(r.BlockLeftMs)
		}
		if len(r.Windows) == 0 {
			fmt.Fprintf(tw, "  %s\t-\t-\t-\t%s\t%d\n", r.Rule, blocked, r.Strikes)
		}
		for i, win := range r.Windows {
			name := r.Rule
			if i > 0 {
				name, blocked = "", ""
			}
			fmt.Fprintf(tw, "  %s\t%s\t%d\t%s\t%s\t%s\n", name, window(win), win.Count, ms(win.LeftMs), blocked, strikes(i, r.Strikes))
		}
	}
	return tw.Flush()
}

func strikes(i int, n int64) string {
	if i > 0 {
		return ""
	}
	return strconv.FormatInt(n, 10)
}

// window prints a window as N/length, with its tiers' limits of that length.
func window(w limit.WindowState) string {
	s := ms(w.PerMs)
	if w.Limit > 0 {
		s = strconv.FormatInt(w.Limit, 10) + "/" + s
	}
	tiers := make([]string, 0, len(w.TierLimits))
	for t, n := range w.TierLimits {
		tiers = append(tiers, t+" "+strconv.FormatInt(n, 10))
	}
	sort.Strings(tiers)
	if len(tiers) > 0 {
		s += " (" + strings.Join(tiers, ", ") + ")"
	}
	return s
}

func printConnections(w io.Writer, b []byte) error {
	var cs admin.Connections
	if err := json.Unmarshal(b, &cs); err != nil {
		return err
	}
	fmt.Fprintf(w, "%d connection(s) on %s\n", len(cs.Connections), cs.Replica)
	if len(cs.Connections) == 0 {
		return nil
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  ID\tSUBJECT\tIP\tPATH\tOPEN FOR")
	for _, c := range cs.Connections {
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\n", clean(c.ID), clean(c.Subject), c.IP, clean(c.Path), time.Since(c.Opened).Round(time.Second))
	}
	return tw.Flush()
}

func printRevocations(w io.Writer, b []byte) error {
	var rs admin.Revocations
	if err := json.Unmarshal(b, &rs); err != nil {
		return err
	}
	fmt.Fprintf(w, "%d revocation(s)\n", len(rs.Revocations))
	if len(rs.Revocations) == 0 {
		return nil
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  SUBJECT\tJTI\tLEFT\tREASON")
	for _, r := range rs.Revocations {
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\n", clean(r.Subject), clean(r.JTI), time.Until(r.Until).Round(time.Second), clean(r.Reason))
	}
	return tw.Flush()
}
