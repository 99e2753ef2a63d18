// Package turboquant is a cgo binding of libturboquant: TurboQuant vector quantization and KV-cache
// compression with attention computed over the compressed cache.
//
// Host memory is []float32 (the context dtype is always F32 and the backend CPU here). Every handle
// implements io.Closer; Close is idempotent and a finalizer frees handles that were never closed.
// Failures are *Error values carrying the library's own message: each C call and the read of its
// thread-local last error run on one locked OS thread.
//
// Build: cgo finds include/turboquant.h and target/release/libturboquant.so of this repository
// (run `cargo build --release` first); set CGO_CFLAGS / CGO_LDFLAGS to use an installed copy.
package turboquant

/*
#cgo CFLAGS: -I${SRCDIR}/../../include
#cgo LDFLAGS: -L${SRCDIR}/../../target/release -lturboquant -Wl,-rpath,${SRCDIR}/../../target/release
#include <stdlib.h>
#include "turboquant.h"
*/
import "C"

import (
	"fmt"
	"math"
	"runtime"
	"sync"
	"unsafe"
)

// Status is a tq_status value.
type Status uint32

// Status values (tq_status); stable and never reused.
const (
	StatusOK                 Status = C.TQ_STATUS_OK
	StatusInvalidArgument    Status = C.TQ_STATUS_INVALID_ARGUMENT
	StatusNullPointer        Status = C.TQ_STATUS_NULL_POINTER
	StatusUnsupported        Status = C.TQ_STATUS_UNSUPPORTED
	StatusABIMismatch        Status = C.TQ_STATUS_ABI_MISMATCH
	StatusNonFinite          Status = C.TQ_STATUS_NON_FINITE
	StatusOutOfMemory        Status = C.TQ_STATUS_OUT_OF_MEMORY
	StatusCapacityExceeded   Status = C.TQ_STATUS_CAPACITY_EXCEEDED
	StatusBackendUnavailable Status = C.TQ_STATUS_BACKEND_UNAVAILABLE
	StatusBackendError       Status = C.TQ_STATUS_BACKEND_ERROR
	StatusIOError            Status = C.TQ_STATUS_IO_ERROR
	StatusCorruptData        Status = C.TQ_STATUS_CORRUPT_DATA
	StatusIncompatible       Status = C.TQ_STATUS_INCOMPATIBLE
	StatusPoisoned           Status = C.TQ_STATUS_POISONED
	StatusInternalError      Status = C.TQ_STATUS_INTERNAL_ERROR
)

// String is the library's name for the status (tq_status_to_string).
func (s Status) String() string { return C.GoString(C.tq_status_to_string(C.uint32_t(s))) }

// Error is a failed libturboquant call.
type Error struct {
	Status   Status // what kind of failure
	Function string // the C function that failed
	Message  string // tq_last_error_message() read right after the call, on the same thread
}

func (e *Error) Error() string {
	return fmt.Sprintf("%s: %s (%s)", e.Function, e.Message, e.Status)
}

// Is makes errors.Is(err, turboquant.StatusX) work.
func (e *Error) Is(target error) bool {
	s, ok := target.(Status)
	return ok && s == e.Status
}

// Error lets a Status be an errors.Is target.
func (s Status) Error() string { return s.String() }

// call runs one C call and, on failure, reads the thread-local last error on the same OS thread.
func call(function string, f func() C.enum_tq_status) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	st := f()
	if st == C.TQ_STATUS_OK {
		return nil
	}
	return &Error{Status: Status(st), Function: function, Message: C.GoString(C.tq_last_error_message())}
}

// argError is an error found by the binding before calling the library.
func argError(function, format string, args ...interface{}) error {
	return &Error{Status: StatusInvalidArgument, Function: function, Message: fmt.Sprintf(format, args...)}
}

// Version is the library's version string.
func Version() string { return C.GoString(C.tq_version()) }

func f32ptr(s []float32) *C.float {
	if len(s) == 0 {
		return nil
	}
	return (*C.float)(unsafe.Pointer(&s[0]))
}

func u16ptr(s []uint16) *C.uint16_t {
	if len(s) == 0 {
		return nil
	}
	return (*C.uint16_t)(unsafe.Pointer(&s[0]))
}

func u8ptr(s []byte) *C.uint8_t {
	if len(s) == 0 {
		return nil
	}
	return (*C.uint8_t)(unsafe.Pointer(&s[0]))
}

// Rotation applied before quantization.
type Rotation uint32

const (
	RotationAuto     Rotation = C.TQ_ROTATION_AUTO
	RotationDense    Rotation = C.TQ_ROTATION_DENSE
	RotationHadamard Rotation = C.TQ_ROTATION_HADAMARD
)

// QuantizerKind selects TurboQuant_mse or TurboQuant_prod.
type QuantizerKind uint32

const (
	QuantizerMSE  QuantizerKind = C.TQ_QUANTIZER_MSE
	QuantizerProd QuantizerKind = C.TQ_QUANTIZER_PROD
)

// KeyMode selects how a context quantizes keys.
type KeyMode uint32

const (
	KeyModeMSE  KeyMode = C.TQ_KEY_MODE_MSE
	KeyModeProd KeyMode = C.TQ_KEY_MODE_PROD
)

// ---------------------------------------------------------------------------------------------
// Quantizer

// QuantizerParams are the parameters of NewQuantizer (tq_quantizer_params).
type QuantizerParams struct {
	Dim      int
	Bits     int
	Kind     QuantizerKind
	Rotation Rotation
	NThreads int // 0 = all cores
	Seed     uint64
}

// DefaultQuantizerParams are the library's defaults (tq_quantizer_default_params).
func DefaultQuantizerParams() QuantizerParams {
	p := C.tq_quantizer_default_params()
	return QuantizerParams{Dim: int(p.dim), Bits: int(p.bits), Kind: QuantizerKind(p.kind),
		Rotation: Rotation(p.rotation), NThreads: int(p.n_threads), Seed: uint64(p.seed)}
}

// Quantizer quantizes vectors of Dim floats.
type Quantizer struct {
	mu         sync.RWMutex // read-held during each call, write-held by Close
	h          *C.tq_quantizer
	dim        int
	codeBytes  int
	scaleCount int
}

func u32(function, name string, v int) (C.uint32_t, error) {
	if v < 0 || v > math.MaxUint32 {
		return 0, argError(function, "%s %d is out of range for uint32", name, v)
	}
	return C.uint32_t(v), nil
}

// layerSeq converts a layer and a sequence id to the C API's uint32, refusing values C would wrap
// (sequence 1<<32 is not sequence 0).
func layerSeq(function string, layer, seq int) (C.uint32_t, C.uint32_t, error) {
	cLayer, err := u32(function, "layer", layer)
	if err != nil {
		return 0, 0, err
	}
	cSeq, err := u32(function, "seq", seq)
	return cLayer, cSeq, err
}

// NewQuantizer creates a quantizer (tq_quantizer_new).
func NewQuantizer(p QuantizerParams) (*Quantizer, error) {
	const fn = "tq_quantizer_new"
	cp := C.tq_quantizer_default_params()
	var err error
	if cp.dim, err = u32(fn, "Dim", p.Dim); err != nil {
		return nil, err
	}
	if cp.bits, err = u32(fn, "Bits", p.Bits); err != nil {
		return nil, err
	}
	if cp.n_threads, err = u32(fn, "NThreads", p.NThreads); err != nil {
		return nil, err
	}
	cp.kind = C.uint32_t(p.Kind)
	cp.rotation = C.uint32_t(p.Rotation)
	cp.seed = C.uint64_t(p.Seed)
	q := &Quantizer{dim: p.Dim}
	if err := call(fn, func() C.enum_tq_status { return C.tq_quantizer_new(&cp, &q.h) }); err != nil {
		return nil, err
	}
	runtime.SetFinalizer(q, (*Quantizer).Close)
	var n C.size_t
	if err := call("tq_quantizer_code_bytes", func() C.enum_tq_status { return C.tq_quantizer_code_bytes(q.h, &n) }); err != nil {
		q.Close()
		return nil, err
	}
	q.codeBytes = int(n)
	if err := call("tq_quantizer_scale_count", func() C.enum_tq_status { return C.tq_quantizer_scale_count(q.h, &n) }); err != nil {
		q.Close()
		return nil, err
	}
	q.scaleCount = int(n)
	return q, nil
}

// Close frees the quantizer. Idempotent.
func (q *Quantizer) Close() error {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.h != nil {
		C.tq_quantizer_free(q.h)
		q.h = nil
	}
	return nil
}

// Dim is the vector dimension.
func (q *Quantizer) Dim() int { return q.dim }

// CodeBytes is the number of code bytes per vector.
func (q *Quantizer) CodeBytes() int { return q.codeBytes }

// ScaleCount is the number of bf16 scales per vector.
func (q *Quantizer) ScaleCount() int { return q.scaleCount }

// live read-locks the quantizer for one call (release with done) unless it is closed: a concurrent
// Close waits for calls in flight instead of freeing the handle under them.
func (q *Quantizer) live(function string) error {
	q.mu.RLock()
	if q.h == nil {
		q.mu.RUnlock()
		return argError(function, "the quantizer is closed")
	}
	return nil
}

func (q *Quantizer) done() { q.mu.RUnlock() }

// ExpectedMSE is the exact expected normalised MSE E|x-x̂|²/|x|² of the (MSE stage of the) codebook.
func (q *Quantizer) ExpectedMSE() (float64, error) {
	const fn = "tq_quantizer_expected_mse"
	if err := q.live(fn); err != nil {
		return 0, err
	}
	defer q.done()
	var out C.double
	err := call(fn, func() C.enum_tq_status { return C.tq_quantizer_expected_mse(q.h, &out) })
	runtime.KeepAlive(q)
	return float64(out), err
}

// Quantize quantizes len(x)/Dim vectors (row-major). It returns the packed codes (CodeBytes per
// vector) and the scales (ScaleCount bf16 values per vector).
func (q *Quantizer) Quantize(x []float32) (codes []byte, scales []uint16, err error) {
	const fn = "tq_quantize"
	if err := q.live(fn); err != nil {
		return nil, nil, err
	}
	defer q.done()
	if len(x)%q.dim != 0 {
		return nil, nil, argError(fn, "len(x) = %d is not a multiple of dim %d", len(x), q.dim)
	}
	n := len(x) / q.dim
	codes = make([]byte, n*q.codeBytes)
	scales = make([]uint16, n*q.scaleCount)
	err = call(fn, func() C.enum_tq_status {
		return C.tq_quantize(q.h, f32ptr(x), C.size_t(n), u8ptr(codes), u16ptr(scales))
	})
	runtime.KeepAlive(q)
	if err != nil {
		return nil, nil, err
	}
	return codes, scales, nil
}

func (q *Quantizer) count(fn string, codes []byte, scales []uint16) (int, error) {
	if err := q.live(fn); err != nil {
		return 0, err
	}
	defer q.done()
	if len(codes)%q.codeBytes != 0 {
		return 0, argError(fn, "len(codes) = %d is not a multiple of CodeBytes %d", len(codes), q.codeBytes)
	}
	n := len(codes) / q.codeBytes
	if len(scales) != n*q.scaleCount {
		return 0, argError(fn, "len(scales) = %d, expected %d for %d vectors", len(scales), n*q.scaleCount, n)
	}
	return n, nil
}

// Dequantize reconstructs the vectors (row-major, Dim floats each) from Quantize's output.
func (q *Quantizer) Dequantize(codes []byte, scales []uint16) ([]float32, error) {
	const fn = "tq_dequantize"
	n, err := q.count(fn, codes, scales)
	if err != nil {
		return nil, err
	}
	out := make([]float32, n*q.dim)
	err = call(fn, func() C.enum_tq_status {
		return C.tq_dequantize(q.h, u8ptr(codes), u16ptr(scales), C.size_t(n), f32ptr(out))
	})
	runtime.KeepAlive(q)
	if err != nil {
		return nil, err
	}
	return out, nil
}

// InnerProduct estimates <y, x_i> for one query y (Dim floats) against the quantized vectors.
func (q *Quantizer) InnerProduct(y []float32, codes []byte, scales []uint16) ([]float32, error) {
	const fn = "tq_inner_product"
	n, err := q.count(fn, codes, scales)
	if err != nil {
		return nil, err
	}
	if len(y) != q.dim {
		return nil, argError(fn, "len(y) = %d, expected dim %d", len(y), q.dim)
	}
	out := make([]float32, n)
	err = call(fn, func() C.enum_tq_status {
		return C.tq_inner_product(q.h, f32ptr(y), u8ptr(codes), u16ptr(scales), C.size_t(n), f32ptr(out))
	})
	runtime.KeepAlive(q)
	if err != nil {
		return nil, err
	}
	return out, nil
}

// BF16ToFloat converts bf16 bit patterns (e.g. scales) to float32.
func BF16ToFloat(v []uint16) ([]float32, error) {
	out := make([]float32, len(v))
	err := call("tq_bf16_to_float", func() C.enum_tq_status {
		return C.tq_bf16_to_float(u16ptr(v), C.size_t(len(v)), f32ptr(out))
	})
	return out, err
}

// ---------------------------------------------------------------------------------------------
// Context and slot mode

// ContextParams are the parameters of NewContext (tq_context_params; dtype F32, backend CPU).
type ContextParams struct {
	NLayers, NHeads, NKVHeads, HeadDim int
	BitsK, BitsV                       int
	Rotation                           Rotation
	KeyMode                            KeyMode
	NThreads                           int // 0 = all cores
	Seed                               uint64
	Centering                          bool // key centering (on in DefaultContextParams; a zero ContextParams has it off)
	CenterValues                       bool // with Centering: center V too (off by default)
	KeyOutliers                        int  // channels per key head at BitsK+1 (0 = off; tq_context_params.key_outliers)
}

// DefaultContextParams are the library's defaults (tq_context_default_params).
func DefaultContextParams() ContextParams {
	p := C.tq_context_default_params()
	return ContextParams{NLayers: int(p.n_layers), NHeads: int(p.n_heads), NKVHeads: int(p.n_kv_heads),
		HeadDim: int(p.head_dim), BitsK: int(p.bits_k), BitsV: int(p.bits_v),
		Rotation: Rotation(p.rotation), KeyMode: KeyMode(p.key_mode), NThreads: int(p.n_threads),
		Seed: uint64(p.seed), Centering: bool(p.centering), CenterValues: bool(p.center_values),
		KeyOutliers: int(p.key_outliers)}
}

// Context holds every layer's K and V rotation and codebook.
type Context struct {
	mu                   sync.RWMutex // read-held during each call (and by its caches' calls), write-held by Close
	h                    *C.tq_context
	p                    ContextParams
	kRowBytes, vRowBytes int
}

// NewContext creates a context (tq_context_new).
func NewContext(p ContextParams) (*Context, error) {
	const fn = "tq_context_new"
	cp := C.tq_context_default_params()
	fields := []struct {
		name string
		v    int
		dst  *C.uint32_t
	}{
		{"NLayers", p.NLayers, &cp.n_layers}, {"NHeads", p.NHeads, &cp.n_heads},
		{"NKVHeads", p.NKVHeads, &cp.n_kv_heads}, {"HeadDim", p.HeadDim, &cp.head_dim},
		{"BitsK", p.BitsK, &cp.bits_k}, {"BitsV", p.BitsV, &cp.bits_v}, {"NThreads", p.NThreads, &cp.n_threads},
		{"KeyOutliers", p.KeyOutliers, &cp.key_outliers},
	}
	for _, f := range fields {
		v, err := u32(fn, f.name, f.v)
		if err != nil {
			return nil, err
		}
		*f.dst = v
	}
	cp.rotation = C.uint32_t(p.Rotation)
	cp.key_mode = C.uint32_t(p.KeyMode)
	cp.dtype = C.TQ_DTYPE_F32
	cp.backend = C.TQ_BACKEND_CPU
	cp.seed = C.uint64_t(p.Seed)
	cp.centering = C.bool(p.Centering)
	cp.center_values = C.bool(p.CenterValues)
	c := &Context{p: p}
	if err := call(fn, func() C.enum_tq_status { return C.tq_context_new(&cp, &c.h) }); err != nil {
		return nil, err
	}
	runtime.SetFinalizer(c, (*Context).Close)
	var kb, vb C.size_t
	if err := call("tq_context_row_bytes", func() C.enum_tq_status { return C.tq_context_row_bytes(c.h, &kb, &vb) }); err != nil {
		c.Close()
		return nil, err
	}
	c.kRowBytes, c.vRowBytes = int(kb), int(vb)
	return c, nil
}

// Close frees the context. Idempotent. Caches made from it must be closed first.
func (c *Context) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.h != nil {
		C.tq_context_free(c.h)
		c.h = nil
	}
	return nil
}

// Params are the parameters the context was made with.
func (c *Context) Params() ContextParams { return c.p }

// RowBytes are the bytes per token per layer of a K row and of a V row (all kv heads).
func (c *Context) RowBytes() (k, v int) { return c.kRowBytes, c.vRowBytes }

// live read-locks the context for one call (release with done) unless it is closed.
func (c *Context) live(function string) error {
	c.mu.RLock()
	if c.h == nil {
		c.mu.RUnlock()
		return argError(function, "the context is closed")
	}
	return nil
}

func (c *Context) done() { c.mu.RUnlock() }

// AppendKV compresses len(slots) tokens of k and v (each [n][NKVHeads][HeadDim]) into rows of
// layer at cells slots[i] of the stores (slot mode: the caller owns kStore and vStore, n_cells
// rows of RowBytes each).
func (c *Context) AppendKV(layer int, kStore, vStore []byte, slots []int64, k, v []float32) error {
	const fn = "tq_append_kv"
	if err := c.live(fn); err != nil {
		return err
	}
	defer c.done()
	cLayer, err := u32(fn, "layer", layer)
	if err != nil {
		return err
	}
	nCells, err := c.cells(fn, kStore, vStore)
	if err != nil {
		return err
	}
	row := c.p.NKVHeads * c.p.HeadDim
	n := len(slots)
	if len(k) != n*row || len(v) != n*row {
		return argError(fn, "len(k) = %d and len(v) = %d, expected %d for %d tokens", len(k), len(v), n*row, n)
	}
	if n > 0 && nCells == 0 {
		return argError(fn, "kStore and vStore are empty: no cells to write %d tokens into", n)
	}
	var slotPtr *C.int64_t
	if n > 0 {
		slotPtr = (*C.int64_t)(unsafe.Pointer(&slots[0]))
	}
	err = call(fn, func() C.enum_tq_status {
		return C.tq_append_kv(c.h, cLayer, unsafe.Pointer(u8ptr(kStore)), unsafe.Pointer(u8ptr(vStore)),
			C.size_t(nCells), slotPtr, C.size_t(n), unsafe.Pointer(f32ptr(k)), nil, unsafe.Pointer(f32ptr(v)), nil, nil)
	})
	runtime.KeepAlive(c)
	return err
}

func (c *Context) cells(fn string, kStore, vStore []byte) (int, error) {
	if len(kStore)%c.kRowBytes != 0 || len(vStore)%c.vRowBytes != 0 {
		return 0, argError(fn, "store lengths %d and %d are not multiples of the row bytes %d and %d",
			len(kStore), len(vStore), c.kRowBytes, c.vRowBytes)
	}
	nk, nv := len(kStore)/c.kRowBytes, len(vStore)/c.vRowBytes
	if nk != nv {
		return 0, argError(fn, "kStore holds %d cells but vStore %d", nk, nv)
	}
	return nk, nil
}

// Attend computes attention of len(q)/(NHeads*HeadDim) queries ([n_q][NHeads][HeadDim]) over all
// cells of the stores. mask is nil (all cells visible) or additive with n_q rows of n_cells floats
// (-Inf hides a cell). scale multiplies q·k; 0 means 1/sqrt(HeadDim). Returns [n_q][NHeads][HeadDim].
func (c *Context) Attend(layer int, q []float32, kStore, vStore []byte, mask []float32, scale float32) ([]float32, error) {
	const fn = "tq_attend"
	if err := c.live(fn); err != nil {
		return nil, err
	}
	defer c.done()
	cLayer, err := u32(fn, "layer", layer)
	if err != nil {
		return nil, err
	}
	nCells, err := c.cells(fn, kStore, vStore)
	if err != nil {
		return nil, err
	}
	row := c.p.NHeads * c.p.HeadDim
	if len(q)%row != 0 {
		return nil, argError(fn, "len(q) = %d is not a multiple of NHeads*HeadDim = %d", len(q), row)
	}
	nQ := len(q) / row
	if mask != nil && len(mask) != nQ*nCells {
		return nil, argError(fn, "len(mask) = %d, expected n_q*n_cells = %d", len(mask), nQ*nCells)
	}
	if scale == 0 {
		scale = float32(1 / math.Sqrt(float64(c.p.HeadDim)))
	}
	out := make([]float32, len(q))
	err = call(fn, func() C.enum_tq_status {
		return C.tq_attend(c.h, cLayer, unsafe.Pointer(f32ptr(q)), C.size_t(nQ), nil,
			unsafe.Pointer(u8ptr(kStore)), unsafe.Pointer(u8ptr(vStore)), C.size_t(nCells),
			unsafe.Pointer(f32ptr(mask)), C.TQ_DTYPE_F32, C.size_t(nCells), C.float(scale),
			unsafe.Pointer(f32ptr(out)), nil, nil)
	})
	runtime.KeepAlive(c)
	if err != nil {
		return nil, err
	}
	return out, nil
}

// DequantizeRows returns the rows of every cell of store — layer's K rows, or its V rows when
// values is true — as vectors ([n_cells][NKVHeads][HeadDim]) in the original basis with the
// layer's centering mean added: what Attend scores against (keys) or weighs (values).
func (c *Context) DequantizeRows(layer int, store []byte, values bool) ([]float32, error) {
	const fn = "tq_dequantize_rows"
	if err := c.live(fn); err != nil {
		return nil, err
	}
	defer c.done()
	cLayer, err := u32(fn, "layer", layer)
	if err != nil {
		return nil, err
	}
	rb, part := c.kRowBytes, C.uint32_t(C.TQ_KV_KEYS)
	if values {
		rb, part = c.vRowBytes, C.uint32_t(C.TQ_KV_VALUES)
	}
	if len(store)%rb != 0 {
		return nil, argError(fn, "len(store) = %d is not a multiple of the row bytes %d", len(store), rb)
	}
	nCells := len(store) / rb
	out := make([]float32, nCells*c.p.NKVHeads*c.p.HeadDim)
	err = call(fn, func() C.enum_tq_status {
		return C.tq_dequantize_rows(c.h, cLayer, part, unsafe.Pointer(u8ptr(store)), C.size_t(nCells),
			unsafe.Pointer(f32ptr(out)), C.TQ_DTYPE_F32, nil, nil)
	})
	runtime.KeepAlive(c)
	if err != nil {
		return nil, err
	}
	return out, nil
}

// StateSave returns the context's state (centering means and key-outlier channels).
func (c *Context) StateSave() ([]byte, error) {
	if err := c.live("tq_context_state_save"); err != nil {
		return nil, err
	}
	defer c.done()
	var size C.size_t
	if err := call("tq_context_state_size", func() C.enum_tq_status { return C.tq_context_state_size(c.h, &size) }); err != nil {
		return nil, err
	}
	buf := make([]byte, int(size))
	err := call("tq_context_state_save", func() C.enum_tq_status { return C.tq_context_state_save(c.h, u8ptr(buf), size) })
	runtime.KeepAlive(c)
	if err != nil {
		return nil, err
	}
	return buf, nil
}

// StateLoad restores a state saved by StateSave from a context with the same parameters.
func (c *Context) StateLoad(buf []byte) error {
	const fn = "tq_context_state_load"
	if err := c.live(fn); err != nil {
		return err
	}
	defer c.done()
	err := call(fn, func() C.enum_tq_status { return C.tq_context_state_load(c.h, u8ptr(buf), C.size_t(len(buf))) })
	runtime.KeepAlive(c)
	return err
}

// ---------------------------------------------------------------------------------------------
// Owned cache

// CacheParams are the parameters of NewCache (tq_cache_params).
type CacheParams struct {
	MaxSeqs        int // sequence ids 0..MaxSeqs-1
	MaxTokens      int // per sequence
	ResidualWindow int // most recent tokens kept in full precision
	NSink          int // first tokens kept in full precision
}

// DefaultCacheParams are the library's defaults (tq_cache_default_params).
func DefaultCacheParams() CacheParams {
	p := C.tq_cache_default_params()
	return CacheParams{MaxSeqs: int(p.max_seqs), MaxTokens: int(p.max_tokens),
		ResidualWindow: int(p.residual_window), NSink: int(p.n_sink)}
}

// Cache is an owned KV cache over a Context.
type Cache struct {
	mu  sync.RWMutex // read-held during each call, write-held by Close
	h   *C.tq_cache
	ctx *Context // kept alive while the cache lives
}

// NewCache creates an empty cache for ctx (tq_cache_new); ctx must stay open while the cache lives.
func NewCache(ctx *Context, p CacheParams) (*Cache, error) {
	const fn = "tq_cache_new"
	if err := ctx.live(fn); err != nil {
		return nil, err
	}
	defer ctx.done()
	cp := C.tq_cache_default_params()
	fields := []struct {
		name string
		v    int
		dst  *C.uint32_t
	}{
		{"MaxSeqs", p.MaxSeqs, &cp.max_seqs}, {"MaxTokens", p.MaxTokens, &cp.max_tokens},
		{"ResidualWindow", p.ResidualWindow, &cp.residual_window}, {"NSink", p.NSink, &cp.n_sink},
	}
	for _, f := range fields {
		v, err := u32(fn, f.name, f.v)
		if err != nil {
			return nil, err
		}
		*f.dst = v
	}
	c := &Cache{ctx: ctx}
	if err := call(fn, func() C.enum_tq_status { return C.tq_cache_new(ctx.h, &cp, &c.h) }); err != nil {
		return nil, err
	}
	runtime.SetFinalizer(c, (*Cache).Close)
	return c, nil
}

// Close frees the cache. Idempotent.
func (c *Cache) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.h != nil {
		C.tq_cache_free(c.h)
		c.h = nil
	}
	return nil
}

// live read-locks the cache and its context for one call (release with done) unless either is closed.
func (c *Cache) live(function string) error {
	c.mu.RLock()
	if c.h == nil {
		c.mu.RUnlock()
		return argError(function, "the cache is closed")
	}
	if err := c.ctx.live(function); err != nil {
		c.mu.RUnlock()
		return err
	}
	return nil
}

func (c *Cache) done() {
	c.ctx.done()
	c.mu.RUnlock()
}

// Append appends tokens k and v (each [n][NKVHeads][HeadDim]) to sequence seq of layer.
func (c *Cache) Append(layer, seq int, k, v []float32) error {
	const fn = "tq_cache_append"
	if err := c.live(fn); err != nil {
		return err
	}
	defer c.done()
	cLayer, cSeq, err := layerSeq(fn, layer, seq)
	if err != nil {
		return err
	}
	row := c.ctx.p.NKVHeads * c.ctx.p.HeadDim
	if len(k)%row != 0 || len(v) != len(k) {
		return argError(fn, "len(k) = %d and len(v) = %d must be equal multiples of NKVHeads*HeadDim = %d", len(k), len(v), row)
	}
	err = call(fn, func() C.enum_tq_status {
		return C.tq_cache_append(c.h, cLayer, cSeq, C.size_t(len(k)/row),
			unsafe.Pointer(f32ptr(k)), unsafe.Pointer(f32ptr(v)), nil)
	})
	runtime.KeepAlive(c)
	return err
}

// Attend computes attention of the queries of the last n_q positions of seq (q: [n_q][NHeads][HeadDim],
// causal among them) over everything seq holds in layer. scale 0 means 1/sqrt(HeadDim).
func (c *Cache) Attend(layer, seq int, q []float32, scale float32) ([]float32, error) {
	const fn = "tq_cache_attend"
	if err := c.live(fn); err != nil {
		return nil, err
	}
	defer c.done()
	cLayer, cSeq, err := layerSeq(fn, layer, seq)
	if err != nil {
		return nil, err
	}
	row := c.ctx.p.NHeads * c.ctx.p.HeadDim
	if len(q)%row != 0 {
		return nil, argError(fn, "len(q) = %d is not a multiple of NHeads*HeadDim = %d", len(q), row)
	}
	if scale == 0 {
		scale = float32(1 / math.Sqrt(float64(c.ctx.p.HeadDim)))
	}
	out := make([]float32, len(q))
	err = call(fn, func() C.enum_tq_status {
		return C.tq_cache_attend(c.h, cLayer, cSeq, unsafe.Pointer(f32ptr(q)),
			C.size_t(len(q)/row), C.float(scale), unsafe.Pointer(f32ptr(out)), nil)
	})
	runtime.KeepAlive(c)
	if err != nil {
		return nil, err
	}
	return out, nil
}

// SeqLen is the number of positions sequence seq holds.
func (c *Cache) SeqLen(seq int) (int, error) {
	const fn = "tq_cache_seq_len"
	if err := c.live(fn); err != nil {
		return 0, err
	}
	defer c.done()
	cSeq, err := u32(fn, "seq", seq)
	if err != nil {
		return 0, err
	}
	var n C.size_t
	err = call(fn, func() C.enum_tq_status { return C.tq_cache_seq_len(c.h, cSeq, &n) })
	runtime.KeepAlive(c)
	return int(n), err
}

// SeqRm removes positions [p0, p1) of seq (seq < 0: every sequence; p0 < 0: from 0; p1 < 0: to the end).
func (c *Cache) SeqRm(seq int, p0, p1 int64) error {
	const fn = "tq_cache_seq_rm"
	if err := c.live(fn); err != nil {
		return err
	}
	defer c.done()
	if seq < 0 {
		seq = -1
	} else if seq > math.MaxInt32 {
		return argError(fn, "seq %d is out of range for int32", seq)
	}
	err := call(fn, func() C.enum_tq_status { return C.tq_cache_seq_rm(c.h, C.int32_t(seq), C.int64_t(p0), C.int64_t(p1)) })
	runtime.KeepAlive(c)
	return err
}

// SeqCp copies positions [p0, p1) of src to dst.
func (c *Cache) SeqCp(src, dst int, p0, p1 int64) error {
	const fn = "tq_cache_seq_cp"
	if err := c.live(fn); err != nil {
		return err
	}
	defer c.done()
	cSrc, err := u32(fn, "src", src)
	if err != nil {
		return err
	}
	cDst, err := u32(fn, "dst", dst)
	if err != nil {
		return err
	}
	err = call(fn, func() C.enum_tq_status {
		return C.tq_cache_seq_cp(c.h, cSrc, cDst, C.int64_t(p0), C.int64_t(p1))
	})
	runtime.KeepAlive(c)
	return err
}

// SeqKeep removes every sequence but seq.
func (c *Cache) SeqKeep(seq int) error {
	const fn = "tq_cache_seq_keep"
	if err := c.live(fn); err != nil {
		return err
	}
	defer c.done()
	cSeq, err := u32(fn, "seq", seq)
	if err != nil {
		return err
	}
	err = call(fn, func() C.enum_tq_status { return C.tq_cache_seq_keep(c.h, cSeq) })
	runtime.KeepAlive(c)
	return err
}

// Clear empties the cache.
func (c *Cache) Clear() error {
	const fn = "tq_cache_clear"
	if err := c.live(fn); err != nil {
		return err
	}
	defer c.done()
	err := call(fn, func() C.enum_tq_status { return C.tq_cache_clear(c.h) })
	runtime.KeepAlive(c)
	return err
}

// MemoryUsage is what tq_cache_memory_usage reports.
type MemoryUsage struct {
	BytesUsed   int // bytes of stored rows, full-precision values and positions
	BytesFP16   int // what an f16 K/V cache would hold for the same tokens
	NTokens     int // tokens held, summed over sequences and layers
	NCompressed int // of those, tokens stored compressed
}

// MemoryUsage reports the memory the cache holds.
func (c *Cache) MemoryUsage() (MemoryUsage, error) {
	const fn = "tq_cache_memory_usage"
	if err := c.live(fn); err != nil {
		return MemoryUsage{}, err
	}
	defer c.done()
	var m C.tq_cache_memory
	err := call(fn, func() C.enum_tq_status { return C.tq_cache_memory_usage(c.h, &m) })
	runtime.KeepAlive(c)
	return MemoryUsage{int(m.bytes_used), int(m.bytes_fp16), int(m.n_tokens), int(m.n_compressed)}, err
}

// Save serialises the cache (versioned, checksummed).
func (c *Cache) Save() ([]byte, error) {
	const fn = "tq_cache_save"
	if err := c.live(fn); err != nil {
		return nil, err
	}
	defer c.done()
	var need C.size_t
	if err := call(fn, func() C.enum_tq_status { return C.tq_cache_save(c.h, nil, 0, &need) }); err != nil {
		return nil, err
	}
	buf := make([]byte, int(need))
	var written C.size_t
	err := call(fn, func() C.enum_tq_status {
		return C.tq_cache_save(c.h, unsafe.Pointer(u8ptr(buf)), need, &written)
	})
	runtime.KeepAlive(c)
	if err != nil {
		return nil, err
	}
	return buf[:int(written)], nil
}

// Load replaces the cache's contents by a cache saved with Save.
func (c *Cache) Load(buf []byte) error {
	const fn = "tq_cache_load"
	if err := c.live(fn); err != nil {
		return err
	}
	defer c.done()
	err := call(fn, func() C.enum_tq_status {
		return C.tq_cache_load(c.h, unsafe.Pointer(u8ptr(buf)), C.size_t(len(buf)))
	})
	runtime.KeepAlive(c)
	return err
}

// SaveFile saves the cache to a file.
func (c *Cache) SaveFile(path string) error {
	const fn = "tq_cache_save_file"
	if err := c.live(fn); err != nil {
		return err
	}
	defer c.done()
	cs := C.CString(path)
	defer C.free(unsafe.Pointer(cs))
	err := call(fn, func() C.enum_tq_status { return C.tq_cache_save_file(c.h, cs) })
	runtime.KeepAlive(c)
	return err
}

// LoadFile loads a cache saved with SaveFile.
func (c *Cache) LoadFile(path string) error {
	const fn = "tq_cache_load_file"
	if err := c.live(fn); err != nil {
		return err
	}
	defer c.done()
	cs := C.CString(path)
	defer C.free(unsafe.Pointer(cs))
	err := call(fn, func() C.enum_tq_status { return C.tq_cache_load_file(c.h, cs) })
	runtime.KeepAlive(c)
	return err
}
