// Causal attention of a batch of tokens over the KV cache, tiled: one workgroup per (head,
// QT consecutive batch tokens). Each token attends to its own sequence's cache up to its
// position. The workgroup keeps its QT query rows in workgroup memory and streams the keys in
// blocks of KB positions, so each K/V row is read once per tile instead of once per token:
//   pass 1: scores of each block; every thread keeps the running maximum and sum of exp of
//           its own score slots (online softmax), combined per token at the end;
//   pass 2: scores again, probabilities exp(s − max) / sum rounded to f16 (as llama.cpp's CPU
//           backend and `model::cpu` do), weighted sum of the V block.
// Key blocks past the tile's last position are never visited (causal skip). Tokens of one
// tile that belong to different sequences are handled one sequence after the other.
// Grouped-query heads share their KV head.
struct Params {
    n_head: u32,
    n_kv: u32,
    hd: u32,
    ctx: u32,
    n_tok: u32,
    q_ld: u32,
    kv_ld: u32,
    o_ld: u32,
    scale: f32,
    pad0: u32,
    pad1: u32,
    // Sliding window (gemma3's local layers): a token at p sees keys kp with p - kp < window;
    // 0: none.
    window: u32,
}
@group(0) @binding(0) var<storage, read> Q: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> KC: array<$KV4>;
@group(0) @binding(2) var<storage, read> VC: array<$KV4>;
@group(0) @binding(3) var<storage, read_write> O: array<vec4<f32>>;
@group(0) @binding(4) var<uniform> P: Params;
@group(0) @binding(5) var<storage, read> TI: array<vec2<u32>>;

// Head size / 4, query tokens per workgroup, keys per block.
const HD4: u32 = $HD4u;
const QT: u32 = $QTu;
const KB: u32 = $KBu;
// Row stride of the K block (vec4s), padded against bank conflicts.
const KLD: u32 = HD4 + 1u;
const NONE: u32 = 0xffffffffu;
// Score slots and output vec4s per thread.
const NS: u32 = (QT * KB + 255u) / 256u;
const NO: u32 = (QT * HD4 + 255u) / 256u;

var<workgroup> Qs: array<vec4<f32>, QT * HD4>;
var<workgroup> Ks: array<vec4<f32>, KB * KLD>;
var<workgroup> Vs: array<vec4<f32>, KB * HD4>;
var<workgroup> Ps: array<f32, QT * KB>;
var<workgroup> Ls2: array<f32, QT * KB>;
var<workgroup> Ms: array<f32, QT>;
var<workgroup> Ls: array<f32, QT>;
var<workgroup> Tseq: array<u32, QT>;
var<workgroup> Tpos: array<u32, QT>;
var<workgroup> Tdone: array<u32, QT>;
// (sequence, last position) of the pass over one sequence; NONE when every token is done.
var<workgroup> cur: vec2<u32>;
// First key block that a token of that pass sees (its sliding window).
var<workgroup> kfirst: u32;

// r16(x): x rounded to the nearest f16 value (ties to even), as f32 (`R16_WGSL` in src/gpu/kernels.rs).
$R16

// Key position kp is visible from position pos (causal, inside the sliding window).
fn vis(kp: u32, pos: u32) -> bool {
    return kp <= pos && (P.window == 0u || kp + P.window > pos);
}

// Token `qi` of the tile takes part in the pass over sequence `seq`.
fn mine(qi: u32, seq: u32) -> bool {
    return Tdone[qi] == 0u && Tseq[qi] == seq;
}

// K block at positions kb0.. of the sequence whose cache starts at `cb4` (vec4 units).
fn load_k(cb4: u32, kb4: u32, kb0: u32, lid: u32) {
    for (var i = lid; i < KB * HD4; i += 256u) {
        let r = i / HD4;
        let kp = min(kb0 + r, P.ctx - 1u);
        Ks[r * KLD + i % HD4] = kc_ld(cb4 + kp * (P.kv_ld / 4u) + kb4 + i % HD4);
    }
}

// Scaled score of slot i: tile token i / KB with key kb0 + i % KB (K block in Ks).
fn score(i: u32) -> f32 {
    let qi = i / KB;
    let ki = i % KB;
    var s = 0.0;
    for (var d = 0u; d < HD4; d++) {
        s += dot(Qs[qi * HD4 + d], Ks[ki * KLD + d]);
    }
    return s * P.scale;
}

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wg: vec3<u32>) {
    let h = wg.x;
    let t0 = wg.y * QT;
    let kb4 = (h / (P.n_head / P.n_kv)) * HD4;
    if (lid < QT) {
        let tok = t0 + lid;
        if (tok < P.n_tok) {
            Tseq[lid] = TI[tok].x;
            Tpos[lid] = TI[tok].y;
            Tdone[lid] = 0u;
        } else {
            Tseq[lid] = NONE;
            Tpos[lid] = 0u;
            Tdone[lid] = 1u;
        }
    }
    for (var i = lid; i < QT * HD4; i += 256u) {
        let tok = min(t0 + i / HD4, P.n_tok - 1u);
        Qs[i] = Q[tok * (P.q_ld / 4u) + h * HD4 + i % HD4];
    }
    loop {
        workgroupBarrier();
        if (lid == 0u) {
            var s = NONE;
            var mp = 0u;
            var mn = NONE;
            for (var i = 0u; i < QT; i++) {
                if (Tdone[i] == 0u) {
                    if (s == NONE) {
                        s = Tseq[i];
                    }
                    if (Tseq[i] == s) {
                        mp = max(mp, Tpos[i]);
                        mn = min(mn, Tpos[i]);
                    }
                }
            }
            cur = vec2<u32>(s, mp);
            var kf = 0u;
            if (P.window > 0u && s != NONE && mn + 1u > P.window) {
                kf = (mn + 1u - P.window) / KB * KB;
            }
            kfirst = kf;
        }
        let c = workgroupUniformLoad(&cur);
        let kstart = workgroupUniformLoad(&kfirst);
        if (c.x == NONE) {
            break;
        }
        let seq = c.x;
        let nkeys = c.y + 1u;
        let cb4 = seq * P.ctx * (P.kv_ld / 4u);
        // Pass 1: running maximum and sum of exp per score slot (token i / KB, keys i % KB,
        // i % KB + KB, ...), then per token over its KB slots.
        var pm: array<f32, NS>;
        var pl: array<f32, NS>;
        for (var j = 0u; j < NS; j++) {
            pm[j] = -3.0e38;
            pl[j] = 0.0;
        }
        for (var kb0 = kstart; kb0 < nkeys; kb0 += KB) {
            load_k(cb4, kb4, kb0, lid);
            workgroupBarrier();
            for (var j = 0u; j < NS; j++) {
                let i = lid + 256u * j;
                if (i < QT * KB) {
                    let qi = i / KB;
                    if (mine(qi, seq) && vis(kb0 + i % KB, Tpos[qi])) {
                        let s = score(i);
                        let mn = max(pm[j], s);
                        pl[j] = pl[j] * exp(pm[j] - mn) + exp(s - mn);
                        pm[j] = mn;
                    }
                }
            }
            workgroupBarrier();
        }
        for (var j = 0u; j < NS; j++) {
            let i = lid + 256u * j;
            if (i < QT * KB) {
                Ps[i] = pm[j];
                Ls2[i] = pl[j];
            }
        }
        workgroupBarrier();
        if (lid < QT) {
            var m = -3.0e38;
            for (var k = 0u; k < KB; k++) {
                m = max(m, Ps[lid * KB + k]);
            }
            var l = 0.0;
            for (var k = 0u; k < KB; k++) {
                l += Ls2[lid * KB + k] * exp(Ps[lid * KB + k] - m);
            }
            Ms[lid] = m;
            Ls[lid] = select(0.0, 1.0 / l, l > 0.0);
        }
        // Pass 2: probabilities and the weighted sum of V (thread: NO vec4 outputs).
        var acc: array<vec4<f32>, NO>;
        for (var j = 0u; j < NO; j++) {
            acc[j] = vec4<f32>(0.0);
        }
        for (var kb0 = kstart; kb0 < nkeys; kb0 += KB) {
            workgroupBarrier();
            load_k(cb4, kb4, kb0, lid);
            for (var i = lid; i < KB * HD4; i += 256u) {
                let kp = kb0 + i / HD4;
                var v = vec4<f32>(0.0);
                if (kp < nkeys) {
                    v = vc_ld(cb4 + kp * (P.kv_ld / 4u) + kb4 + i % HD4);
                }
                Vs[i] = v;
            }
            workgroupBarrier();
            for (var i = lid; i < QT * KB; i += 256u) {
                let qi = i / KB;
                let kp = kb0 + i % KB;
                var p = 0.0;
                if (mine(qi, seq) && vis(kp, Tpos[qi])) {
                    p = r16(exp(score(i) - Ms[qi]) * Ls[qi]);
                }
                Ps[i] = p;
            }
            workgroupBarrier();
            for (var j = 0u; j < NO; j++) {
                let o = lid + 256u * j;
                if (o < QT * HD4) {
                    let qi = o / HD4;
                    let d = o % HD4;
                    var a = acc[j];
                    for (var k = 0u; k < KB; k++) {
                        a += Ps[qi * KB + k] * Vs[k * HD4 + d];
                    }
                    acc[j] = a;
                }
            }
        }
        for (var j = 0u; j < NO; j++) {
            let o = lid + 256u * j;
            if (o < QT * HD4 && mine(o / HD4, seq)) {
                O[(t0 + o / HD4) * (P.o_ld / 4u) + h * HD4 + o % HD4] = acc[j];
            }
        }
        workgroupBarrier();
        if (lid < QT && mine(lid, seq)) {
            Tdone[lid] = 1u;
        }
    }
}
