package main

import (
	"fmt"
	"image"
	"image/color"
	"image/png"
	"math"
	"os"
)

// bar is one row of a panel: a target and one value per series.
type bar struct {
	key   string // target key, for its colour
	label string
	vals  []float64 // NaN draws "n/a"
	texts []string
}

// panel is one horizontal bar chart.
type panel struct {
	title  string
	legend string // "" for one series
	bars   []bar
}

var (
	white     = color.RGBA{255, 255, 255, 255}
	ink       = color.RGBA{30, 30, 30, 255}
	gridInk   = color.RGBA{225, 225, 225, 255}
	keyColour = map[string]color.RGBA{
		"direct":      {150, 150, 150, 255},
		"nginx":       {0, 150, 57, 255},
		"haproxy":     {30, 100, 200, 255},
		"gate-memory": {230, 120, 0, 255},
		"gate-exact":  {190, 60, 20, 255},
		"gate-lease":  {240, 180, 40, 255},
		keyB:          {120, 60, 160, 255},
	}
)

// lighter blends c halfway to white, for a panel's second series.
func lighter(c color.RGBA) color.RGBA {
	return color.RGBA{c.R/2 + 128, c.G/2 + 128, c.B/2 + 128, 255}
}

// renderChart draws panels two to a row and writes a PNG to path.
func renderChart(path, heading string, panels []panel) error {
	const (
		panelW  = 720
		scale   = 2
		lineH   = 7*scale + 8
		labelW  = 15 * 6 * scale
		valueW  = 11 * 6 * scale
		margin  = 20
		titleH  = 2 * lineH
		headerH = 50
	)
	panelH := 0
	for _, p := range panels {
		h := titleH + margin
		for _, b := range p.bars {
			h += len(b.vals)*lineH + 8
		}
		panelH = max(panelH, h+margin)
	}
	rows := (len(panels) + 1) / 2
	img := image.NewRGBA(image.Rect(0, 0, 2*panelW, headerH+rows*panelH))
	fillRect(img, 0, 0, img.Bounds().Dx(), img.Bounds().Dy(), white)
	drawText(img, margin, 16, heading, scale, ink)

	for i, p := range panels {
		x0 := (i % 2) * panelW
		y0 := headerH + (i/2)*panelH
		fillRect(img, x0+4, y0, panelW-8, 1, gridInk)
		drawText(img, x0+margin, y0+10, p.title, scale, ink)
		if p.legend != "" {
			drawText(img, x0+margin, y0+10+lineH, p.legend, 1, ink)
		}
		maxV := 0.0
		for _, b := range p.bars {
			for _, v := range b.vals {
				if !math.IsNaN(v) {
					maxV = math.Max(maxV, v)
				}
			}
		}
		barX := x0 + margin + labelW
		barMax := panelW - 2*margin - labelW - valueW
		y := y0 + titleH + margin
		for _, b := range p.bars {
			drawText(img, x0+margin, y+(len(b.vals)*lineH-7*scale)/2, b.label, scale, ink)
			c := keyColour[b.key]
			for j, v := range b.vals {
				bc := c
				if j > 0 {
					bc = lighter(c)
				}
				w := 0
				if !math.IsNaN(v) && maxV > 0 && v > 0 {
					w = max(1, int(v/maxV*float64(barMax)))
				}
				fillRect(img, barX, y+2, w, lineH-4, bc)
				drawText(img, barX+w+6, y+4, b.texts[j], scale, ink)
				y += lineH
			}
			y += 8
		}
	}
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("chart: %w", err)
	}
	if err := png.Encode(f, img); err != nil {
		f.Close()
		return fmt.Errorf("chart: %w", err)
	}
	return f.Close()
}
