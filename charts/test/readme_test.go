package charttest

import (
	"flag"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite charts/wsgate/README.md from values.yaml")

// TestChartREADME: charts/wsgate/README.md lists every value that
// values.yaml documents with a "# --" comment (as helm-docs reads them),
// with its default, and is what valuesTable makes of values.yaml today.
// `go test -run TestChartREADME -update` rewrites it.
func TestChartREADME(t *testing.T) {
	values := string(readFile(t, filepath.Join(chartDir, "values.yaml")))
	rows := valuesTable(values)
	if len(rows) < 100 {
		t.Fatalf("%d documented values found in values.yaml", len(rows))
	}
	readme := filepath.Join(chartDir, "README.md")
	raw, err := os.ReadFile(readme)
	if err != nil {
		t.Fatal(err)
	}
	head := string(raw)
	i := strings.Index(head, tableMarker)
	if i < 0 {
		t.Fatalf("%s lacks the line %q", readme, tableMarker)
	}
	want := head[:i+len(tableMarker)] + "\n\n" + renderTable(rows)
	if *update {
		if err := os.WriteFile(readme, []byte(want), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	if head != want {
		t.Errorf("%s is stale: run `cd charts/test && go test -run TestChartREADME -update`", readme)
	}
	// Every key of the gate's flags is documented.
	for _, key := range []string{"gate.auth.requireAuth", "gate.redis.required", "gate.web.socketioPath", "trustedProxies", "sidecar.native"} {
		found := false
		for _, r := range rows {
			found = found || r.key == key
		}
		if !found {
			t.Errorf("README.md does not list %s", key)
		}
	}
}

const tableMarker = "<!-- values: generated from values.yaml by charts/test (TestChartREADME -update); do not edit below -->"

type valueRow struct{ key, def, desc string }

var keyLine = regexp.MustCompile(`^(\s*)([A-Za-z0-9_.-]+):\s*(.*)$`)

// valuesTable reads values.yaml line by line: a "# --" comment and the
// comment lines after it describe the next key, whose dotted path comes
// from the indentation and whose default is the rest of its line (or
// "{...}" for a map written below it).
func valuesTable(values string) []valueRow {
	var rows []valueRow
	var path []string
	var indents []int
	var desc []string
	inDesc := false
	lines := strings.Split(values, "\n")
	for n, line := range lines {
		trimmed := strings.TrimSpace(line)
		switch {
		case strings.HasPrefix(trimmed, "# --"):
			desc, inDesc = []string{strings.TrimSpace(strings.TrimPrefix(trimmed, "# --"))}, true
			continue
		case strings.HasPrefix(trimmed, "#"):
			if inDesc {
				desc = append(desc, strings.TrimSpace(strings.TrimPrefix(trimmed, "#")))
			}
			continue
		case trimmed == "" || strings.HasPrefix(trimmed, "- "):
			if trimmed == "" {
				inDesc, desc = false, nil
			}
			continue
		}
		m := keyLine.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		indent := len(m[1])
		for len(indents) > 0 && indents[len(indents)-1] >= indent {
			indents, path = indents[:len(indents)-1], path[:len(path)-1]
		}
		indents, path = append(indents, indent), append(path, m[2])
		if inDesc {
			def := strings.TrimSpace(m[3])
			if def == "" {
				def = "{...}"
				if n+1 < len(lines) && strings.HasPrefix(strings.TrimSpace(lines[n+1]), "- ") {
					def = "[...]"
				}
			}
			rows = append(rows, valueRow{strings.Join(path, "."), def, strings.Join(desc, " ")})
		}
		inDesc, desc = false, nil
	}
	return rows
}

func renderTable(rows []valueRow) string {
	var b strings.Builder
	b.WriteString("| Key | Default | Description |\n| --- | --- | --- |\n")
	esc := strings.NewReplacer("|", `\|`)
	for _, r := range rows {
		b.WriteString("| `" + r.key + "` | `" + esc.Replace(r.def) + "` | " + esc.Replace(r.desc) + " |\n")
	}
	return b.String()
}
