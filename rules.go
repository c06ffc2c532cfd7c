package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/holo/wsgate/policy"
)

// rulesCommand is "wsgate rules": check a rules file, or explain what it
// does with one client and message.
func rulesCommand() *cli.Command {
	return &cli.Command{
		Name:            "rules",
		Usage:           "check a rules file, or explain what it does with a client and a message",
		HideHelpCommand: true,
		Subcommands: []*cli.Command{
			{
				Name:      "check",
				Usage:     "validate rules files: print a summary of each and exit 0, or every problem with its line and exit 2",
				ArgsUsage: "FILE...",
				Action: func(c *cli.Context) error {
					if c.NArg() == 0 {
						return cli.Exit("wsgate rules check: name a rules file", exitBadConfig)
					}
					var bad []string
					for _, f := range c.Args().Slice() {
						p, err := policy.Load(f)
						if err != nil {
							bad = append(bad, err.Error())
							continue
						}
						fmt.Fprintf(c.App.Writer, "%s: %d classes, %d tiers, %d rules, sha256 %s\n",
							f, len(p.Classes), len(p.Tiers), len(p.Rules), p.Hash)
					}
					if len(bad) > 0 {
						return cli.Exit(strings.Join(bad, "\n"), exitBadConfig)
					}
					return nil
				},
			},
			{
				Name:  "explain",
				Usage: "print which tier, classes and rules apply to a client and a message, with their keys and limits",
				Flags: []cli.Flag{
					&cli.StringFlag{Name: "rules-file", Usage: "the rules file", Required: true},
					&cli.StringFlag{Name: "path", Value: "/", Usage: "the request path of the handshake"},
					&cli.StringFlag{Name: "ip", Value: "192.0.2.1", Usage: "the client IP"},
					&cli.StringFlag{Name: "claims", Usage: `the verified token's claims as JSON, e.g. '{"sub":"alice","plan":"pro"}'; none: no token`},
					&cli.StringSliceFlag{Name: "header", Usage: `a request header of the handshake, "Name: value" (repeatable)`},
					&cli.StringFlag{Name: "message", Usage: "a text message from the client, e.g. '42[\"chat:send\",\"hi\"]'"},
				},
				Action: func(c *cli.Context) error {
					p, err := policy.Load(c.String("rules-file"))
					if err != nil {
						return cli.Exit(err.Error(), exitBadConfig)
					}
					cl, err := explainClient(c)
					if err != nil {
						return cli.Exit("wsgate rules explain: "+err.Error(), exitBadConfig)
					}
					var msg []byte
					if c.IsSet("message") {
						msg = []byte(c.String("message"))
					}
					return p.Explain(c.App.Writer, cl, msg)
				},
			},
		},
	}
}

// explainClient is the client that --ip, --claims, --path and --header of
// "rules explain" describe.
func explainClient(c *cli.Context) (*policy.Client, error) {
	ip, err := netip.ParseAddr(c.String("ip"))
	if err != nil {
		return nil, fmt.Errorf("--ip %q is not an IP address", c.String("ip"))
	}
	cl := &policy.Client{Path: c.String("path"), IP: ip, User: ip.String(), Header: http.Header{}, Conn: "this-connection"}
	if s := c.String("claims"); s != "" {
		// Numbers as a verified token's claims hold them (json.Number).
		dec := json.NewDecoder(strings.NewReader(s))
		dec.UseNumber()
		if err := dec.Decode(&cl.Claims); err != nil || cl.Claims == nil || dec.More() {
			return nil, errors.New("--claims must be a JSON object")
		}
		sub, _ := cl.Claims["sub"].(string)
		if sub == "" {
			return nil, errors.New(`--claims needs a "sub": a verified token always has one`)
		}
		cl.Subject, cl.User = sub, sub
	}
	for _, h := range c.StringSlice("header") {
		name, value, ok := strings.Cut(h, ":")
		if !ok || strings.TrimSpace(name) == "" {
			return nil, fmt.Errorf("--header %q: want \"Name: value\"", h)
		}
		cl.Header.Add(strings.TrimSpace(name), strings.TrimSpace(value))
	}
	return cl, nil
}
