// Example: quantize and dequantize vectors; build a compressed KV cache, append, attend.
//
//	cd bindings/go && go run ./example
package main

import (
	"fmt"
	"log"
	"math/rand"

	turboquant "github.com/libturboquant/turboquant/bindings/go"
)

func main() {
	rng := rand.New(rand.NewSource(0))
	randn := func(n int) []float32 {
		x := make([]float32, n)
		for i := range x {
			x[i] = float32(rng.NormFloat64())
		}
		return x
	}

	// 1. 1000 vectors of dimension 128 at 4 bits.
	p := turboquant.DefaultQuantizerParams()
	p.Dim, p.Bits = 128, 4
	q, err := turboquant.NewQuantizer(p)
	if err != nil {
		log.Fatal(err)
	}
	defer q.Close()
	x := randn(1000 * 128)
	codes, scales, err := q.Quantize(x)
	if err != nil {
		log.Fatal(err)
	}
	xHat, err := q.Dequantize(codes, scales)
	if err != nil {
		log.Fatal(err)
	}
	var errSum, norm float64
	for i := range x {
		d := float64(x[i] - xHat[i])
		errSum += d * d
		norm += float64(x[i]) * float64(x[i])
	}
	expected, _ := q.ExpectedMSE()
	fmt.Printf("quantizer: %d code bytes per vector; normalised MSE %.5f, expected %.5f\n",
		q.CodeBytes(), errSum/norm, expected)

	// 2. A KV cache: one layer, 8 query heads sharing 2 kv heads, head_dim 64.
	cp := turboquant.DefaultContextParams()
	cp.NLayers, cp.NHeads, cp.NKVHeads, cp.HeadDim = 1, 8, 2, 64
	ctx, err := turboquant.NewContext(cp)
	if err != nil {
		log.Fatal(err)
	}
	defer ctx.Close()
	params := turboquant.DefaultCacheParams()
	params.MaxTokens, params.ResidualWindow = 1024, 32
	cache, err := turboquant.NewCache(ctx, params)
	if err != nil {
		log.Fatal(err)
	}
	defer cache.Close()
	const nTokens = 500
	if err := cache.Append(0, 0, randn(nTokens*2*64), randn(nTokens*2*64)); err != nil {
		log.Fatal(err)
	}
	out, err := cache.Attend(0, 0, randn(8*64), 0) // the query of the last position
	if err != nil {
		log.Fatal(err)
	}
	m, _ := cache.MemoryUsage()
	fmt.Printf("cache: %d tokens, %d compressed, %d bytes (fp16 would be %d); output head 0 starts %.4f %.4f\n",
		m.NTokens, m.NCompressed, m.BytesUsed, m.BytesFP16, out[0], out[1])

	// Errors carry the library's message.
	if _, err := cache.Attend(0, 0, randn(8*64*600), 0); err != nil {
		fmt.Println("expected error:", err)
	}
}
