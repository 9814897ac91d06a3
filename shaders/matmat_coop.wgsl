// Tiled dequantize-in-shader matrix × matrix on cooperative matrices (tensor cores):
// Y[t][row] = W[row] · X[t] for prompt batches, f16 inputs, f32 accumulation.
//
// A workgroup (8 subgroups of 32) computes a BM-row × BN-token tile. Per stage of KU
// 32-weight units (KS = 32·KU of K) it dequantizes the BM × KS weight tile once and converts
// the BN × KS input tile to f16 in workgroup memory; subgroup s owns WR rows × WT tokens
// ((WR/16)·(WT/16) accumulators of 16 × 16) and issues that many products per 16 of K.
// Each accumulator then goes through the subgroup's 16 × 16 slice of workgroup memory so
// the output modes of matvec.wgsl (store, residual add, SwiGLU) apply per element.
enable f16;
enable wgpu_cooperative_matrix;

struct Params {
    rows: u32,
    units: u32,
    d_off: u32,
    x_off: u32,
    ld_x: u32,
    y_off: u32,
    ld_y: u32,
    n_tok: u32,
    mode: u32,
    row0: u32,
    pad0: u32,
    pad1: u32,
}

@group(0) @binding(0) var<storage, read> W: array<u32>;
@group(0) @binding(1) var<storage, read> X: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> Y: array<f32>;
@group(0) @binding(3) var<uniform> P: Params;

const UPB: u32 = $UPBu;
const BM: u32 = $BMu;
const BN: u32 = $BNu;
const KU: u32 = $KUu;
const KS: u32 = KU * 32u;
// Row stride (elements) of the tiles: KS + 8 f16 (16 bytes of padding against bank conflicts
// of the cooperative loads).
const LDW: u32 = KS + 8u;
const WR: u32 = $WRu;
const WT: u32 = $WTu;
const SGR: u32 = BM / WR;

// NBUF stage buffers (2: a stage is stored while the previous one is multiplied, one barrier
// per stage).
const NBUF: u32 = $NBUFu;
var<workgroup> Ws: array<f16, NBUF * BM * LDW>;  // [BM rows][LDW]: W[row][k]
var<workgroup> Xs: array<f16, NBUF * BN * LDW>;  // [BN tokens][LDW]: X[t][k]
var<workgroup> Cs: array<f32, 2048>;      // per subgroup one 16 × 16 tile, column-major

$DEQ

// The output modes for one 16 × 16 accumulator tile (rows r0.., tokens t0.. of the
// workgroup's tile) that subgroup `sg` stored into Cs.
fn epilogue(sg: u32, lane: u32, r0: u32, t0: u32) {
    let cb = sg * 256u;
    for (var e = 0u; e < 8u; e++) {
        let idx = lane + 32u * e;
        let rr = idx % 16u;
        let tt = idx / 16u;
        let row = r0 + rr;
        let tok = t0 + tt;
        if (row >= P.rows || tok >= P.n_tok) {
            continue;
        }
        let v = Cs[cb + tt * 16u + rr];
        let orow = P.row0 + row;
        let o = P.y_off + tok * P.ld_y + orow;
        if (P.mode == 0u) {
            Y[o] = v;
        } else if (P.mode == 1u) {
            Y[o] = Y[o] + v;
        } else if (P.mode == 3u) {
            let gt = Y[o + P.pad0];
            Y[o] = gt / (1.0 + exp(-gt)) * v;
        } else if ((orow & 1u) == 0u) {
            let up = Cs[cb + tt * 16u + rr + 1u];
            Y[P.y_off + tok * P.ld_y + orow / 2u] = v / (1.0 + exp(-v)) * up;
        }
    }
}

// Tile loads. Weight item h of thread lid: row wr = p / (8·KU), group q = p % (8·KU) of the
// stage's units (p = lid + 256·h); input item h: token xt, group q likewise.
fn w_gu(h: u32, lid: u32, u0: u32, row_base: u32) -> vec2<u32> {
    let p = lid + h * 256u;
    let wr = p / (8u * KU);
    let q = p % (8u * KU);
    let u = min(u0 + q / 8u, P.units - 1u);
    return vec2<u32>(min(row_base + wr, P.rows - 1u) * P.units + u, q);
}

fn w_live(h: u32, lid: u32, u0: u32) -> bool {
    return u0 + ((lid + h * 256u) % (8u * KU)) / 8u < P.units;
}

fn w_store(h: u32, lid: u32, wb: u32, w: vec4<f16>) {
    let p = lid + h * 256u;
    let wo = wb + (p / (8u * KU)) * LDW + 4u * (p % (8u * KU));
    Ws[wo] = w.x;
    Ws[wo + 1u] = w.y;
    Ws[wo + 2u] = w.z;
    Ws[wo + 3u] = w.w;
}

// The input group (f32, as stored) of item h at stage u0; zero past the row.
fn x_load(h: u32, lid: u32, u0: u32, tok_base: u32) -> vec4<f32> {
    let p = lid + h * 256u;
    let xt = p / (8u * KU);
    let q = p % (8u * KU);
    let t = min(tok_base + xt, P.n_tok - 1u);
    let g = min(u0 * 8u + q, P.units * 8u - 1u);
    return select(vec4<f32>(0.0), X[P.x_off + t * P.ld_x + g], u0 + q / 8u < P.units);
}

fn x_store(h: u32, lid: u32, xb: u32, x: vec4<f32>) {
    let p = lid + h * 256u;
    let xo = xb + (p / (8u * KU)) * LDW + 4u * (p % (8u * KU));
    let xv = vec4<f16>(x);
    Xs[xo] = xv.x;
    Xs[xo + 1u] = xv.y;
    Xs[xo + 2u] = xv.z;
    Xs[xo + 3u] = xv.w;
}

// Weight item h at stage u0, dequantized (zero past the row).
fn wdeq(h: u32, lid: u32, u0: u32, row_base: u32) -> vec4<f16> {
    let g = w_gu(h, lid, u0, row_base);
    return select(vec4<f16>(0.0), vec4<f16>(deq4(g.x / UPB, g.x % UPB, g.y % 8u)), w_live(h, lid, u0));
}
$RAWLOAD

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wg: vec3<u32>) {
    let row_base = wg.x * BM;
    let tok_base = wg.y * BN;
    let sg = lid / 32u;
    let lane = lid % 32u;
    let rb = (sg % SGR) * WR;
    let tb = (sg / SGR) * WT;
$ACC_DECL
$PF_INIT
    for (var u0 = 0u; u0 < P.units; u0 += KU) {
        let wb = ((u0 / KU) % NBUF) * (BM * LDW);
        let xb = ((u0 / KU) % NBUF) * (BN * LDW);
$STAGE_STORE
        workgroupBarrier();
$PF_PRE
        for (var kk = 0u; kk < KS; kk += 16u) {
$ACC_MMA
        }
$PF_POST
        if (NBUF == 1u) {
            workgroupBarrier();
        }
    }
    // C[row][t] column-major: Cs[t][row] per 16 × 16 tile.
$ACC_STORE
}
