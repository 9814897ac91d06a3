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

var<workgroup> Ws: array<f16, BM * LDW>;  // [BM rows][LDW]: W[row][k]
var<workgroup> Xs: array<f16, BN * LDW>;  // [BN tokens][LDW]: X[t][k]
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

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wg: vec3<u32>) {
    let row_base = wg.x * BM;
    let tok_base = wg.y * BN;
    let sg = lid / 32u;
    let lane = lid % 32u;
    let rb = (sg % SGR) * WR;
    let tb = (sg / SGR) * WT;
$ACC_DECL
    for (var u0 = 0u; u0 < P.units; u0 += KU) {
        // Weights: BM rows × KU units × 8 groups of 4, each dequantized once.
        for (var h = 0u; h < BM * KU / 32u; h++) {
            let p = lid + h * 256u;
            let wr = p / (8u * KU);
            let q = p % (8u * KU);
            let u = u0 + q / 8u;
            var w = vec4<f16>(0.0);
            if (u < P.units) {
                let gu = min(row_base + wr, P.rows - 1u) * P.units + u;
                w = vec4<f16>(deq4(gu / UPB, gu % UPB, q % 8u));
            }
            let wo = wr * LDW + 4u * q;
            Ws[wo] = w.x;
            Ws[wo + 1u] = w.y;
            Ws[wo + 2u] = w.z;
            Ws[wo + 3u] = w.w;
        }
        // Inputs: BN tokens × KS values.
        for (var h = 0u; h < BN * KU / 32u; h++) {
            let p = lid + h * 256u;
            let xt = p / (8u * KU);
            let q = p % (8u * KU);
            var xv = vec4<f16>(0.0);
            if (u0 + q / 8u < P.units) {
                let t = min(tok_base + xt, P.n_tok - 1u);
                xv = vec4<f16>(X[P.x_off + t * P.ld_x + u0 * 8u + q]);
            }
            let xo = xt * LDW + 4u * q;
            Xs[xo] = xv.x;
            Xs[xo + 1u] = xv.y;
            Xs[xo + 2u] = xv.z;
            Xs[xo + 3u] = xv.w;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < KS; kk += 16u) {
$ACC_MMA
        }
        workgroupBarrier();
    }
    // C[row][t] column-major: Cs[t][row] per 16 × 16 tile.
$ACC_STORE
}
