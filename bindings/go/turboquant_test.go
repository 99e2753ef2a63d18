package turboquant

import (
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

// Handles are io.Closers.
var (
	_ io.Closer = (*Quantizer)(nil)
	_ io.Closer = (*Context)(nil)
	_ io.Closer = (*Cache)(nil)
)

func gaussian(rng *rand.Rand, n int) []float32 {
	x := make([]float32, n)
	for i := range x {
		x[i] = float32(rng.NormFloat64())
	}
	return x
}

func TestVersion(t *testing.T) {
	if v := Version(); len(strings.Split(v, ".")) != 3 {
		t.Fatalf("version %q", v)
	}
}

// The measured normalised MSE of a round trip matches the codebook's exact expected value.
func TestRoundTripMSE(t *testing.T) {
	const n, dim = 3000, 128
	for bits := 1; bits <= 4; bits++ {
		p := DefaultQuantizerParams()
		p.Dim, p.Bits, p.Seed = dim, bits, 3
		q, err := NewQuantizer(p)
		if err != nil {
			t.Fatal(err)
		}
		rng := rand.New(rand.NewSource(int64(bits)))
		x := gaussian(rng, n*dim)
		codes, scales, err := q.Quantize(x)
		if err != nil {
			t.Fatal(err)
		}
		if len(codes) != n*dim*bits/8 || len(scales) != n {
			t.Fatalf("codes %d scales %d", len(codes), len(scales))
		}
		xh, err := q.Dequantize(codes, scales)
		if err != nil {
			t.Fatal(err)
		}
		expected, err := q.ExpectedMSE()
		if err != nil {
			t.Fatal(err)
		}
		per := make([]float64, n)
		var mean float64
		for i := 0; i < n; i++ {
			var e, s float64
			for j := 0; j < dim; j++ {
				d := float64(x[i*dim+j]) - float64(xh[i*dim+j])
				e += d * d
				s += float64(x[i*dim+j]) * float64(x[i*dim+j])
			}
			per[i] = e / s
			mean += per[i] / n
		}
		var v float64
		for _, e := range per {
			v += (e - mean) * (e - mean) / n
		}
		// 5 standard errors of the mean, plus 1e-3 relative for the bf16 scale rounding.
		tol := 5*math.Sqrt(v/n) + 1e-3*expected
		if math.Abs(mean-expected) > tol {
			t.Errorf("bits %d: measured MSE %.5f, expected %.5f ± %.5f", bits, mean, expected, tol)
		}
		// The expectation against the SciPy oracle (tests/data/lloyd_max_reference.json), to 1e-6.
		oracle := [...]float64{0.36088859368690557, 0.11600007027511211, 0.033965925793901314, 0.009314787953795874}
		if math.Abs(expected/oracle[bits-1]-1) > 1e-6 {
			t.Errorf("bits %d: expected MSE %.8f, oracle %.8f", bits, expected, oracle[bits-1])
		}
		lo, hi := math.Pow(4, -float64(bits)), math.Sqrt(3)*math.Pi/2*math.Pow(4, -float64(bits))
		if expected < 0.99*lo || expected > hi {
			t.Errorf("bits %d: expected MSE %.5f outside the paper's bounds [%.5f, %.5f]", bits, expected, lo, hi)
		}
		norms, err := BF16ToFloat(scales[:4])
		if err != nil {
			t.Fatal(err)
		}
		for i, nrm := range norms {
			var s float64
			for j := 0; j < dim; j++ {
				s += float64(x[i*dim+j]) * float64(x[i*dim+j])
			}
			if math.Abs(float64(nrm)-math.Sqrt(s)) > math.Sqrt(s)/256 {
				t.Errorf("scale %d = %g, norm %g", i, nrm, math.Sqrt(s))
			}
		}
		q.Close()
		q.Close() // idempotent
	}
}

// Errors carry the library's own message and status, also when several goroutines fail at once.
func TestErrorsCarryLibraryMessage(t *testing.T) {
	p := DefaultQuantizerParams()
	p.Dim, p.Rotation = 100, RotationHadamard
	_, err := NewQuantizer(p)
	var te *Error
	if !errors.As(err, &te) {
		t.Fatalf("want *Error, got %v", err)
	}
	if te.Status != StatusUnsupported || !errors.Is(err, StatusUnsupported) || te.Function != "tq_quantizer_new" {
		t.Fatalf("status %v function %s", te.Status, te.Function)
	}
	if !strings.Contains(te.Message, "dim 100") || !strings.Contains(te.Message, "power of two") {
		t.Fatalf("message %q", te.Message)
	}

	var wg sync.WaitGroup
	dims := []int{40, 48, 56, 72, 80, 88, 96, 104} // none a power of two
	msgs := make([]string, len(dims))
	for i := range msgs {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			p := DefaultQuantizerParams()
			p.Dim, p.Rotation = dims[i], RotationHadamard
			if _, err := NewQuantizer(p); err != nil {
				msgs[i] = err.(*Error).Message
			}
		}(i)
	}
	wg.Wait()
	for i, m := range msgs {
		if !strings.Contains(m, fmt.Sprintf("dim %d ", dims[i])) {
			t.Errorf("goroutine %d got message %q", i, m)
		}
	}

	q, err := NewQuantizer(DefaultQuantizerParams())
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	x := make([]float32, 2*128)
	x[130] = float32(math.NaN())
	_, _, err = q.Quantize(x)
	if !errors.Is(err, StatusNonFinite) {
		t.Fatalf("NaN input: %v", err)
	}
	if _, _, err = q.Quantize(x[:100]); err == nil || !strings.Contains(err.Error(), "not a multiple of dim 128") {
		t.Fatalf("short input: %v", err)
	}
	q.Close()
	if _, err := q.ExpectedMSE(); err == nil || !strings.Contains(err.Error(), "closed") {
		t.Fatalf("closed quantizer: %v", err)
	}
}

const nLayers, nHeads, nKV, headDim = 2, 8, 2, 64

func newContext(t *testing.T, centering bool) *Context {
	p := DefaultContextParams()
	p.NLayers, p.NHeads, p.NKVHeads, p.HeadDim = nLayers, nHeads, nKV, headDim
	p.BitsK, p.BitsV, p.Seed, p.Centering = 4, 4, 11, centering
	c, err := NewContext(p)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// refAttention is float64 softmax attention: q [nQ][nHeads][d], k/v [n][nKV][d], mask [nQ][n] or nil.
func refAttention(q, k, v []float32, nQ, n int, mask []float64, scale float64) []float64 {
	out := make([]float64, nQ*nHeads*headDim)
	group := nHeads / nKV
	s := make([]float64, n)
	for i := 0; i < nQ; i++ {
		for h := 0; h < nHeads; h++ {
			kh := h / group
			mx := math.Inf(-1)
			for j := 0; j < n; j++ {
				var dot float64
				for c := 0; c < headDim; c++ {
					dot += float64(q[(i*nHeads+h)*headDim+c]) * float64(k[(j*nKV+kh)*headDim+c])
				}
				s[j] = dot * scale
				if mask != nil {
					s[j] += mask[i*n+j]
				}
				mx = math.Max(mx, s[j])
			}
			var sum float64
			for j := range s {
				s[j] = math.Exp(s[j] - mx)
				sum += s[j]
			}
			for j := 0; j < n; j++ {
				p := s[j] / sum
				for c := 0; c < headDim; c++ {
					out[(i*nHeads+h)*headDim+c] += p * float64(v[(j*nKV+kh)*headDim+c])
				}
			}
		}
	}
	return out
}

func relErr(got []float32, ref []float64) float64 {
	var e, s float64
	for i := range ref {
		d := float64(got[i]) - ref[i]
		e += d * d
		s += ref[i] * ref[i]
	}
	return math.Sqrt(e / s)
}

// Slot mode against exact attention over the uncompressed K/V: with Gaussian data and scale 1/√d
// the relative output error is ≈ √(ε_k + ε_v) to first order (ε = expected MSE, 0.136 at 4 bits).
func TestSlotAttentionAgainstReference(t *testing.T) {
	ctx := newContext(t, false)
	defer ctx.Close()
	kb, vb := ctx.RowBytes()
	if kb != nKV*(32+2) || vb != kb {
		t.Fatalf("row bytes %d %d", kb, vb)
	}
	const n, nQ = 200, 8
	rng := rand.New(rand.NewSource(1))
	k, v := gaussian(rng, n*nKV*headDim), gaussian(rng, n*nKV*headDim)
	q := gaussian(rng, nQ*nHeads*headDim)
	kStore, vStore := make([]byte, n*kb), make([]byte, n*vb)
	slots := make([]int64, n)
	for i := range slots {
		slots[i] = int64(i)
	}
	if err := ctx.AppendKV(1, kStore, vStore, slots, k, v); err != nil {
		t.Fatal(err)
	}
	out, err := ctx.Attend(1, q, kStore, vStore, nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	ref := refAttention(q, k, v, nQ, n, nil, 1/math.Sqrt(headDim))
	qz, err := NewQuantizer(QuantizerParams{Dim: headDim, Bits: 4})
	if err != nil {
		t.Fatal(err)
	}
	eps, err := qz.ExpectedMSE()
	qz.Close()
	if err != nil {
		t.Fatal(err)
	}
	predicted := math.Sqrt(2 * eps)
	var mean float64
	for i := 0; i < nQ*nHeads; i++ {
		mean += relErr(out[i*headDim:(i+1)*headDim], ref[i*headDim:(i+1)*headDim]) / (nQ * nHeads)
	}
	if mean < 0.5*predicted || mean > 1.5*predicted {
		t.Fatalf("mean relative error %.4f, predicted %.4f", mean, predicted)
	}
	t.Logf("4-bit attention: mean relative error %.4f (predicted %.4f)", mean, predicted)

	// A mask that shows one cell returns that cell's reconstructed value row; a mask hiding
	// everything gives zeros.
	mask := make([]float32, nQ*n)
	for i := range mask {
		mask[i] = float32(math.Inf(-1))
	}
	mask[0*n+5] = 0
	oneCell, err := ctx.Attend(1, q, kStore, vStore, mask, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(oneCell) != nQ*nHeads*headDim {
		t.Fatalf("masked attend returned %d values, want %d", len(oneCell), nQ*nHeads*headDim)
	}
	for c := nHeads * headDim; c < nQ*nHeads*headDim; c++ {
		if oneCell[c] != 0 {
			t.Fatalf("fully masked query row has output %g", oneCell[c])
		}
	}

	// The rows as vectors: attention over them in float64 is what Attend returned.
	kd, err := ctx.DequantizeRows(1, kStore, false)
	if err != nil {
		t.Fatal(err)
	}
	vd, err := ctx.DequantizeRows(1, vStore, true)
	if err != nil {
		t.Fatal(err)
	}
	out, err = ctx.Attend(1, q, kStore, vStore, nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	// Query 0 of the one-cell mask: each head's output is cell 5's decoded value row of its kv head
	// (softmax weight exactly 1; the kernel's f32 sum of one term, so 1e-6 relative).
	for h := 0; h < nHeads; h++ {
		row := vd[(5*nKV+h/(nHeads/nKV))*headDim : (5*nKV+h/(nHeads/nKV)+1)*headDim]
		want := make([]float64, headDim)
		for d := range row {
			want[d] = float64(row[d])
		}
		if e := relErr(oneCell[h*headDim:(h+1)*headDim], want); e > 1e-6 {
			t.Fatalf("one visible cell, head %d: output vs that cell's value row: relative error %.2e", h, e)
		}
	}
	overRows := refAttention(q, kd, vd, nQ, n, nil, 1/math.Sqrt(headDim))
	for i := 0; i < nQ*nHeads; i++ {
		if e := relErr(out[i*headDim:(i+1)*headDim], overRows[i*headDim:(i+1)*headDim]); e > 1e-5 {
			t.Fatalf("query row %d: Attend vs attention over DequantizeRows rows: relative error %.2e", i, e)
		}
	}
	if _, err := ctx.DequantizeRows(1, kStore[:kb+1], false); err == nil || !strings.Contains(err.Error(), "row bytes") {
		t.Fatalf("odd store length: %v", err)
	}

	// Errors from the library.
	slots[3] = slots[2]
	err = ctx.AppendKV(0, kStore, vStore, slots, k, v)
	if !errors.Is(err, StatusInvalidArgument) || !strings.Contains(err.Error(), "slot") {
		t.Fatalf("duplicate slot: %v", err)
	}
	if err := ctx.AppendKV(5, kStore, vStore, slots[:1], k[:nKV*headDim], v[:nKV*headDim]); err == nil || !strings.Contains(err.Error(), "layer") {
		t.Fatalf("bad layer: %v", err)
	}
}

// The owned cache with a residual window holding every token is exact causal attention.
func TestCacheFullPrecisionIsExact(t *testing.T) {
	ctx := newContext(t, false)
	defer ctx.Close()
	p := DefaultCacheParams()
	p.MaxTokens, p.ResidualWindow = 128, 128
	cache, err := NewCache(ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	defer cache.Close()
	const n, nQ = 40, 5
	rng := rand.New(rand.NewSource(2))
	k, v := gaussian(rng, n*nKV*headDim), gaussian(rng, n*nKV*headDim)
	q := gaussian(rng, nQ*nHeads*headDim)
	if err := cache.Append(0, 0, k, v); err != nil {
		t.Fatal(err)
	}
	out, err := cache.Attend(0, 0, q, 0)
	if err != nil {
		t.Fatal(err)
	}
	mask := make([]float64, nQ*n)
	for i := 0; i < nQ; i++ {
		for j := n - nQ + i + 1; j < n; j++ {
			mask[i*n+j] = math.Inf(-1)
		}
	}
	if e := relErr(out, refAttention(q, k, v, nQ, n, mask, 1/math.Sqrt(headDim))); e > 1e-5 {
		t.Fatalf("relative error %g", e)
	}
}

// Compressed owned cache = slot mode with a causal mask over the same rows; sequence ops, memory
// accounting, save/load and the library's errors.
func TestCacheCompressed(t *testing.T) {
	ctx := newContext(t, true)
	defer ctx.Close()
	p := DefaultCacheParams()
	p.MaxSeqs, p.MaxTokens, p.ResidualWindow = 2, 64, 0
	cache, err := NewCache(ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	defer cache.Close()
	const n, nQ = 48, 4
	rng := rand.New(rand.NewSource(3))
	k, v := gaussian(rng, n*nKV*headDim), gaussian(rng, n*nKV*headDim)
	q := gaussian(rng, nQ*nHeads*headDim)
	for layer := 0; layer < nLayers; layer++ {
		if err := cache.Append(layer, 0, k, v); err != nil {
			t.Fatal(err)
		}
	}
	out, err := cache.Attend(1, 0, q, 0)
	if err != nil {
		t.Fatal(err)
	}
	m, err := cache.MemoryUsage()
	if err != nil {
		t.Fatal(err)
	}
	kb, vb := ctx.RowBytes()
	if m.NTokens != nLayers*n || m.NCompressed != m.NTokens || m.BytesUsed < m.NTokens*(kb+vb) || m.BytesFP16 != m.NTokens*2*nKV*headDim*2 {
		t.Fatalf("memory usage %+v", m)
	}

	if err := cache.SeqCp(0, 1, -1, -1); err != nil {
		t.Fatal(err)
	}
	out1, err := cache.Attend(1, 1, q, 0)
	if err != nil {
		t.Fatal(err)
	}
	for i := range out {
		if out[i] != out1[i] {
			t.Fatalf("copied sequence attends differently at %d", i)
		}
	}
	saved, err := cache.Save()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "cache.tq")
	if err := cache.SaveFile(path); err != nil {
		t.Fatal(err)
	}
	if err := cache.SeqRm(0, 10, -1); err != nil {
		t.Fatal(err)
	}
	if l, err := cache.SeqLen(0); err != nil || l != 10 {
		t.Fatalf("seq_len after seq_rm = %d (%v)", l, err)
	}
	if err := cache.Load(saved); err != nil {
		t.Fatal(err)
	}
	if l, err := cache.SeqLen(0); err != nil || l != n {
		t.Fatalf("seq_len after load = %d (%v)", l, err)
	}
	if err := cache.Clear(); err != nil {
		t.Fatal(err)
	}
	if err := cache.LoadFile(path); err != nil {
		t.Fatal(err)
	}
	again, err := cache.Attend(1, 0, q, 0)
	if err != nil || len(again) != len(out) {
		t.Fatalf("attend after LoadFile: %d values (%v), want %d", len(again), err, len(out))
	}
	for i := range out {
		if out[i] != again[i] {
			t.Fatalf("reloaded cache attends differently at %d", i)
		}
	}
	saved[len(saved)/2] ^= 0xff
	if err := cache.Load(saved); !errors.Is(err, StatusCorruptData) {
		t.Fatalf("corrupt load: %v", err)
	}
	if err := cache.LoadFile(filepath.Join(t.TempDir(), "missing")); !errors.Is(err, StatusIOError) {
		t.Fatalf("missing file: %v", err)
	}
	big := gaussian(rng, 20*nKV*headDim)
	err = cache.Append(0, 0, big, big)
	if !errors.Is(err, StatusCapacityExceeded) || !strings.Contains(err.Error(), "max_tokens") {
		t.Fatalf("capacity: %v", err)
	}
	if err := cache.SeqKeep(1); err != nil {
		t.Fatal(err)
	}
	if l, err := cache.SeqLen(0); err != nil || l != 0 {
		t.Fatalf("seq_len after seq_keep(1) = %d (%v)", l, err)
	}

	// Slot mode over the same data, causal mask: the same attention.
	kStore, vStore := make([]byte, n*kb), make([]byte, n*vb)
	slots := make([]int64, n)
	for i := range slots {
		slots[i] = int64(i)
	}
	ctx2 := newContext(t, true)
	defer ctx2.Close()
	if err := ctx2.AppendKV(1, kStore, vStore, slots, k, v); err != nil {
		t.Fatal(err)
	}
	mask := make([]float32, nQ*n)
	for i := 0; i < nQ; i++ {
		for j := n - nQ + i + 1; j < n; j++ {
			mask[i*n+j] = float32(math.Inf(-1))
		}
	}
	slot, err := ctx2.Attend(1, q, kStore, vStore, mask, 0)
	if err != nil {
		t.Fatal(err)
	}
	ref := make([]float64, len(slot))
	for i := range slot {
		ref[i] = float64(slot[i])
	}
	if e := relErr(out, ref); e > 1e-5 {
		t.Fatalf("owned cache vs slot mode: relative error %g", e)
	}
}

func TestContextStateRoundTrip(t *testing.T) {
	a, b := newContext(t, true), newContext(t, true)
	defer a.Close()
	defer b.Close()
	const n = 16
	rng := rand.New(rand.NewSource(4))
	k, v := gaussian(rng, n*nKV*headDim), gaussian(rng, n*nKV*headDim)
	for i := range k {
		k[i] += 3
	}
	kb, vb := a.RowBytes()
	kStore, vStore := make([]byte, n*kb), make([]byte, n*vb)
	slots := make([]int64, n)
	for i := range slots {
		slots[i] = int64(i)
	}
	if err := a.AppendKV(0, kStore, vStore, slots, k, v); err != nil {
		t.Fatal(err)
	}
	state, err := a.StateSave()
	if err != nil {
		t.Fatal(err)
	}
	if err := b.StateLoad(state); err != nil {
		t.Fatal(err)
	}
	q := gaussian(rng, nHeads*headDim)
	oa, err := a.Attend(0, q, kStore, vStore, nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	ob, err := b.Attend(0, q, kStore, vStore, nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(oa) != nHeads*headDim || len(ob) != len(oa) {
		t.Fatalf("attend returned %d and %d values, want %d", len(oa), len(ob), nHeads*headDim)
	}
	for i := range oa {
		if oa[i] != ob[i] {
			t.Fatalf("restored state attends differently at %d", i)
		}
	}
	if err := b.StateLoad(state[:len(state)-2]); err == nil {
		t.Fatal("truncated state accepted")
	}
}

func TestOutOfRangeIdsAreRefused(t *testing.T) {
	// Layer and sequence ids beyond the C types are errors, not wrapped ids (1<<32 would be sequence 0,
	// 1<<31 "every sequence" for SeqRm).
	ctx := newContext(t, true)
	defer ctx.Close()
	cache, err := NewCache(ctx, CacheParams{MaxSeqs: 2, MaxTokens: 16})
	if err != nil {
		t.Fatal(err)
	}
	defer cache.Close()
	rng := rand.New(rand.NewSource(5))
	k := gaussian(rng, 3*nKV*headDim)
	if err := cache.Append(0, 0, k, k); err != nil {
		t.Fatal(err)
	}
	q := gaussian(rng, nHeads*headDim)
	kb, vb := ctx.RowBytes()
	ks, vs := make([]byte, 3*kb), make([]byte, 3*vb)
	for name, err := range map[string]error{
		"Append seq":      cache.Append(0, 1<<32, k, k),
		"Append layer":    cache.Append(1<<32, 0, k, k),
		"SeqRm":           cache.SeqRm(1<<31, -1, -1),
		"SeqCp":           cache.SeqCp(0, 1<<32+1, -1, -1),
		"SeqKeep":         cache.SeqKeep(1 << 32),
		"AppendKV layer":  ctx.AppendKV(1<<32, ks, vs, []int64{0, 1, 2}, k, k),
		"Attend layer":    func() error { _, e := ctx.Attend(1<<32, q, ks, vs, nil, 0); return e }(),
		"SeqLen negative": func() error { _, e := cache.SeqLen(-1); return e }(),
	} {
		if err == nil || !strings.Contains(err.Error(), "out of range") {
			t.Errorf("%s: %v", name, err)
		}
	}
	if l, err := cache.SeqLen(0); err != nil || l != 3 {
		t.Fatalf("seq_len after the refused calls = %d (%v)", l, err)
	}
}

func TestCloseWaitsForCallsInFlight(t *testing.T) {
	// Attends on several goroutines while the cache and then the context are closed: each call either
	// completes or reports the closed handle; none runs on freed memory (run with -race or ASan to see
	// the difference), and Close twice is harmless.
	ctx := newContext(t, true)
	cache, err := NewCache(ctx, CacheParams{MaxSeqs: 1, MaxTokens: 64})
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewSource(6))
	k := gaussian(rng, 32*nKV*headDim)
	if err := cache.Append(0, 0, k, k); err != nil {
		t.Fatal(err)
	}
	q := gaussian(rng, nHeads*headDim)
	var wg sync.WaitGroup
	var ok, closed atomic.Int64
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 2000; i++ {
				out, err := cache.Attend(0, 0, q, 0)
				if err != nil {
					if !strings.Contains(err.Error(), "closed") {
						t.Errorf("attend: %v", err)
					}
					closed.Add(1)
					return
				}
				if len(out) != nHeads*headDim {
					t.Errorf("attend returned %d values", len(out))
					return
				}
				ok.Add(1)
			}
		}()
	}
	for ok.Load() == 0 {
		runtime.Gosched()
	}
	cache.Close()
	ctx.Close()
	ctx.Close()
	wg.Wait()
	if ok.Load() == 0 {
		t.Fatal("no attend completed")
	}
	t.Logf("%d attends completed, %d goroutines saw the closed cache", ok.Load(), closed.Load())
}
