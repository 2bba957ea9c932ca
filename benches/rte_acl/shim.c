/*
 * A thin C shim over DPDK's rte_acl for the classify benchmark: the
 * ClassBench 5-tuple as the DPDK ACL example (l3fwd-acl) lays it out, rules
 * in first-match order as descending priorities. Built only with the
 * benches crate's `rte-acl` feature.
 */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <rte_acl.h>
#include <rte_eal.h>
#include <rte_errno.h>
#include <rte_malloc.h>

/* One ClassBench rule in host byte order. */
struct sg_rule {
	uint32_t src, dst;
	uint8_t src_len, dst_len, proto, proto_mask;
	uint16_t sport_lo, sport_hi, dport_lo, dport_hi;
};

/* Input layout: proto at 0, source at 4, destination at 8, ports at 12/14
 * (network byte order), one 4-byte input word per ACL input_index. */
enum { F_PROTO, F_SRC, F_DST, F_SPORT, F_DPORT, NUM_FIELDS };

static const struct rte_acl_field_def defs[NUM_FIELDS] = {
	{ .type = RTE_ACL_FIELD_TYPE_BITMASK, .size = 1, .field_index = F_PROTO, .input_index = 0, .offset = 0 },
	{ .type = RTE_ACL_FIELD_TYPE_MASK, .size = 4, .field_index = F_SRC, .input_index = 1, .offset = 4 },
	{ .type = RTE_ACL_FIELD_TYPE_MASK, .size = 4, .field_index = F_DST, .input_index = 2, .offset = 8 },
	{ .type = RTE_ACL_FIELD_TYPE_RANGE, .size = 2, .field_index = F_SPORT, .input_index = 3, .offset = 12 },
	{ .type = RTE_ACL_FIELD_TYPE_RANGE, .size = 2, .field_index = F_DPORT, .input_index = 3, .offset = 14 },
};

RTE_ACL_RULE_DEF(sg_acl_rule, NUM_FIELDS);

int sg_rte_init(void)
{
	static int done;
	if (done)
		return 0;
	char *argv[] = { "sgswitch-bench", "--no-huge", "-m", "2048", "--no-pci", "--no-shconf", "--no-telemetry",
			 "-l", "0", "--log-level", "lib.*:error", NULL };
	int argc = (int)(sizeof(argv) / sizeof(argv[0])) - 1;
	if (rte_eal_init(argc, argv) < 0)
		return -rte_errno;
	done = 1;
	return 0;
}

static size_t heap_bytes(void)
{
	struct rte_malloc_socket_stats s;
	size_t total = 0;
	for (int sock = 0; sock < RTE_MAX_NUMA_NODES; sock++)
		if (rte_malloc_get_socket_stats(sock, &s) == 0)
			total += s.heap_allocsz_bytes;
	return total;
}

/* Builds a context; returns NULL and a message in err on failure. */
struct rte_acl_ctx *sg_acl_build(const struct sg_rule *rules, uint32_t n, size_t *mem_bytes, char *err, size_t errlen)
{
	static unsigned seq;
	char name[RTE_ACL_NAMESIZE];
	snprintf(name, sizeof(name), "sg%u", seq++);
	size_t before = heap_bytes();
	struct rte_acl_param prm = {
		.name = name, .socket_id = SOCKET_ID_ANY, .rule_size = RTE_ACL_RULE_SZ(NUM_FIELDS), .max_rule_num = n,
	};
	struct rte_acl_ctx *ctx = rte_acl_create(&prm);
	if (ctx == NULL) {
		snprintf(err, errlen, "rte_acl_create: %s", rte_strerror(rte_errno));
		return NULL;
	}
	for (uint32_t i = 0; i < n; i++) {
		const struct sg_rule *r = &rules[i];
		struct sg_acl_rule a;
		memset(&a, 0, sizeof(a));
		a.data.category_mask = 1;
		a.data.priority = (int32_t)(RTE_ACL_MAX_PRIORITY - i); /* first match wins */
		a.data.userdata = i + 1; /* 0 is "no match" */
		a.field[F_PROTO].value.u8 = r->proto;
		a.field[F_PROTO].mask_range.u8 = r->proto_mask;
		a.field[F_SRC].value.u32 = r->src;
		a.field[F_SRC].mask_range.u32 = r->src_len;
		a.field[F_DST].value.u32 = r->dst;
		a.field[F_DST].mask_range.u32 = r->dst_len;
		a.field[F_SPORT].value.u16 = r->sport_lo;
		a.field[F_SPORT].mask_range.u16 = r->sport_hi;
		a.field[F_DPORT].value.u16 = r->dport_lo;
		a.field[F_DPORT].mask_range.u16 = r->dport_hi;
		int rc = rte_acl_add_rules(ctx, (const struct rte_acl_rule *)&a, 1);
		if (rc != 0) {
			snprintf(err, errlen, "rte_acl_add_rules (rule %u): %d", i, rc);
			rte_acl_free(ctx);
			return NULL;
		}
	}
	struct rte_acl_config cfg;
	memset(&cfg, 0, sizeof(cfg));
	cfg.num_categories = 1;
	cfg.num_fields = NUM_FIELDS;
	memcpy(cfg.defs, defs, sizeof(defs));
	int rc = rte_acl_build(ctx, &cfg);
	if (rc != 0) {
		snprintf(err, errlen, "rte_acl_build: %d", rc);
		rte_acl_free(ctx);
		return NULL;
	}
	*mem_bytes = heap_bytes() - before;
	return ctx;
}

int sg_acl_classify(const struct rte_acl_ctx *ctx, const uint8_t **data, uint32_t *results, uint32_t num)
{
	return rte_acl_classify(ctx, data, results, num, 1);
}

void sg_acl_free(struct rte_acl_ctx *ctx)
{
	rte_acl_free(ctx);
}
